"""Write the bad-input corpus: ``python tests/bad_inputs/make_corpus.py [TARGET]``.

Each case is a small dataset folder (``metadata.csv`` or another listing plus images) or a study config,
named after what is wrong with it. ``corpus.toml`` says which importer reads it and the error expected.
The tests write the corpus into a temporary folder once per session (the files are made, byte for byte
the same every time, rather than committed: several are images, and real-looking image files do not
belong in the repository).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases"


def png(size: tuple[int, int] = (16, 16), colour: str = "red", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _parquet(path: Path, rows: list[dict[str, object]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def _pydicom_file(name: str) -> bytes:
    """A test file that ships inside the pydicom wheel (real DICOM, never downloaded)."""
    import pydicom

    return (Path(pydicom.__file__).parent / "data" / "test_files" / name).read_bytes()


def folder(name: str, metadata: str | bytes, files: dict[str, bytes], listing: str = "metadata.csv") -> None:
    root = _target / name
    root.mkdir(parents=True)
    (root / listing).write_bytes(metadata.encode() if isinstance(metadata, str) else metadata)
    for fname, data in files.items():
        (root / fname).write_bytes(data)


def good_rows(n: int = 2) -> tuple[str, dict[str, bytes]]:
    rows = "".join(f"ok{i}.png,a fine caption {i}\n" for i in range(n))
    return rows, {f"ok{i}.png": png(colour=("red", "blue", "green")[i % 3]) for i in range(n)}


def with_bad_image(name: str, filename: str, data: bytes) -> None:
    rows, files = good_rows()
    folder(name, "file_name,text\n" + rows + f"{filename},the bad one\n", {**files, filename: data})


_target = CASES


def main(target: Path = CASES) -> Path:
    """Write every case under ``target`` (replaced if it exists); returns ``target``."""
    global _target
    _target = target
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    # --- images
    with_bad_image("image_corrupt", "bad.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF garbage that is not a jpeg")
    real = jpeg((256, 256))
    with_bad_image("image_truncated_jpeg", "bad.jpg", real[: len(real) // 3])
    with_bad_image("image_truncated_png", "bad.png", png((200, 200), "white")[:120])
    with_bad_image("image_zero_bytes", "bad.png", b"")
    with_bad_image("image_text_file", "bad.png", b"just some text, not pixels\n")
    with_bad_image("image_html_file", "bad.jpg", b"<html><script>alert(1)</script></html>")
    with_bad_image(
        "image_gif_format",
        "bad.gif",
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9"
        b"\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
    )
    with_bad_image("image_svg", "bad.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>')
    with_bad_image("image_decompression_bomb", "bomb.png", png((12_000, 12_000), mode="L"))
    with_bad_image("image_20000_pixels_wide", "wide.png", png((20_000, 2_500), mode="L"))
    # --- listings
    rows, files = good_rows()
    folder("csv_missing_text_column", "file_name,caption\n" + rows, files)
    folder("csv_missing_file_column", "image,text\n" + rows, files)
    folder("csv_semicolon_delimiter", "file_name;text\n" + rows.replace(",", ";"), files)
    folder("csv_latin1_encoding", ("file_name,text\nok0.png,caf\xe9 au lait\n").encode("latin-1"), files)
    folder("csv_utf16", ("file_name,text\n" + rows).encode("utf-16"), files)
    folder("csv_empty_caption", "file_name,text\nok0.png,\nok1.png,fine\n", files)
    folder("csv_header_only", "file_name,text\n", files)
    folder("csv_empty_file", "", files)
    folder("csv_extra_fields", "file_name,text\nok0.png,a,b,c\n", files)
    folder("csv_duplicate_ids", "file_name,text\n" + rows + "ok0.png,again\n", files)
    folder("csv_path_traversal", "file_name,text\n" + rows + "../../etc/passwd,sneaky\n", files)
    folder("csv_absolute_path", "file_name,text\n" + rows + "/etc/hostname,sneaky\n", files)
    folder("csv_windows_absolute_path", "file_name,text\n" + rows + "C:\\Windows\\win.ini,sneaky\n", files)
    folder("csv_nul_in_file_name", "file_name,text\n" + rows + "ok\x000.png,nul\n", files)
    folder("csv_caption_too_long", "file_name,text\nok0.png," + "polyp " * 1000 + "\n", files)
    folder("csv_control_characters", "file_name,text\nok0.png,bell\x07 in caption\n", files)
    folder("csv_missing_image", "file_name,text\n" + rows + "not_there.png,missing\n", files)
    folder(
        "jsonl_invalid_json",
        '{"file_name": "ok0.png", "text": "x"}\n{"file_name": "ok1.png", "text": \n',
        files,
        listing="metadata.jsonl",
    )
    folder("jsonl_not_an_object", json.dumps(["ok0.png", "x"]) + "\n", files, listing="metadata.jsonl")
    folder("jsonl_missing_field", json.dumps({"file_name": "ok0.png"}) + "\n", files, listing="metadata.jsonl")
    folder(
        "medvqa_wrong_delimiter",
        "Prompt,Filename\nGenerate an image containing a polyp.,ok0.png\n",
        files,
        listing="prompt-gt.csv",
    )
    folder("rocov2_missing_caption_column", "ID,Text\nok0,x\n", {}, listing="test_captions.csv")
    folder("roco_no_tab", "ROCO_00001 caption without a tab\n", {}, listing="captions.txt")
    folder("roco_licences_wrong_columns", "ROCO_00001\t caption\n", {"licences.txt": b"ROCO_ID\tCC\n"},
           listing="captions.txt")  # fmt: skip
    folder("kvasir_vqa_missing_column", "source,question,img_id\nhyperkvasir,Is there a polyp?,ok0\n", files)
    folder("kvasir_x1_captions_not_object", json.dumps(["a caption"]), files, listing="kvasir-captions.json")
    folder("parquet_no_image_column", b"", files, listing="metadata.parquet")
    _parquet(_target / "parquet_no_image_column" / "metadata.parquet", [{"caption": "a polyp", "text": "x"}])
    dicom = _pydicom_file("MR_small.dcm")
    folder("dicom_truncated", "file_name,text\nmr.dcm,an MR\n", {"mr.dcm": dicom[: len(dicom) // 2]},
           listing="captions.csv")  # fmt: skip
    folder("dicom_not_dicom", "file_name,text\nct.dcm,a CT\n", {"ct.dcm": b"just text, not DICOM"},
           listing="captions.csv")  # fmt: skip
    folder("dicom_compressed_no_decoder", "file_name,text\nmr.dcm,an MR\n",
           {"mr.dcm": _pydicom_file("MR_small_jpeg_ls_lossless.dcm")}, listing="captions.csv")  # fmt: skip
    folder("dicom_multiframe", "file_name,text\nd.dcm,a dose grid\n", {"d.dcm": _pydicom_file("rtdose.dcm")},
           listing="captions.csv")  # fmt: skip
    # --- generated-image manifests (need the dataset 'ds' with case 'ok0.png', see the test)
    folder("manifest_seed_not_integer", "file,case,seed\nok0.png,ok0.png,abc\n", files, listing="manifest.csv")
    folder("manifest_unknown_case", "file,case,seed\nok0.png,no-such-case,1\n", files, listing="manifest.csv")
    folder(
        "manifest_duplicate_case_seed",
        "file,case,seed\nok0.png,ok0.png,1\nok1.png,ok0.png,1\n",
        files,
        listing="manifest.csv",
    )
    folder("manifest_negative_seed", "file,case,seed\nok0.png,ok0.png,-5\n", files, listing="manifest.csv")
    folder("manifest_no_case_or_prompt", "file,seed\nok0.png,1\n", files, listing="manifest.csv")
    # --- study configs
    base = 'name = "s"\nseed = 1\ndatasets = ["ds"]\nmodels = ["m"]\ncases_per_model = 1\n'
    configs = {
        "study_invalid_toml": 'name = "s\nseed = 1\n',
        "study_unknown_key": base + "colour = 'red'\n",
        "study_negative_cases": base.replace("cases_per_model = 1", "cases_per_model = -4"),
        "study_absurd_cases": base.replace("cases_per_model = 1", "cases_per_model = 1000000000"),
        "study_seed_is_text": base.replace("seed = 1", 'seed = "one"'),
        "study_fraction_too_big": base + "attention_fraction = 7.5\n",
        "study_display_too_big": base + "[display]\nsize = 100000\n",
        "study_no_models": base.replace('models = ["m"]', "models = []"),
        "study_empty_name": base.replace('name = "s"', 'name = ""'),
    }
    for name, text in configs.items():
        (target / name).mkdir()
        (target / name / "study.toml").write_text(text)
    return target


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[1]) if len(sys.argv) > 1 else CASES)
