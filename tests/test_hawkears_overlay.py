"""HawkEars as an overlay on an existing python (badc_mpi/runners/hawkears/overlay.py, scripts/hawkears/hawkears_overlay.py):
the planning (what to fetch given a have list, parts of <= N MiB, the wrapper), then one offline
end-to-end run: wheels made here, `download` from a local folder, `install` onto HawkEars' python."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from badc_mpi.errors import RunnerSetupError
from badc_mpi.runners.hawkears import env as hawkears_env
from badc_mpi.runners.hawkears import overlay as ov

from ci_rules import skip_or_fail

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "scripts" / "hawkears" / "hawkears_overlay.py")


# ---------------------------------------------------------------------------- have lists and requirements
def test_parse_have_reads_freeze_lines_bare_names_and_the_python_line():
    text = "# python=3.12.3\nnumpy==2.5.2\nPySide6_Essentials==6.12\ntorch\n\n# a comment\nfoo @ file:///x\n-e git+x\n"
    have, python = ov.parse_have(text)
    assert python == "3.12.3"
    assert have == {"numpy": "2.5.2", "pyside6-essentials": "6.12", "torch": None, "foo": None}


def test_have_text_round_trips():
    text = ov.have_text({"Numpy": "2.5.2", "torch": "2.11.0"}, "3.12.3")
    assert text.splitlines()[0] == "# python=3.12.3"
    assert ov.parse_have(text) == ({"numpy": "2.5.2", "torch": "2.11.0"}, "3.12.3")


def test_the_h200_have_file_parses_and_has_torch():
    have, python = ov.parse_have((REPO / "scripts" / "hawkears" / "overlay_have" / "nvidia-h200.txt").read_text())
    assert python == "3.12.3" and have["torch"] == "2.11.0" and "hawkears" not in have


def test_parse_requires_keeps_what_applies_to_the_target():
    lines = [
        "britekit<1.9,>=1.8.4",
        "pandas<3.0,>=2.0; python_version < '3.14'",
        "pandas<3.0,>=2.3.3; python_version >= '3.14'",
        "pytest; extra == 'test'",
        "standard-aifc; python_version >= '3.13'",
        "Requests[socks] (>=2.0)",
        "pywin32; sys_platform == 'win32'",
    ]
    reqs = ov.parse_requires(lines, "3.12.3")
    assert reqs == [ov.Req("britekit", "<1.9,>=1.8.4"), ov.Req("pandas", "<3.0,>=2.0"), ov.Req("requests", ">=2.0")]
    assert ov.Req("standard-aifc", "") in ov.parse_requires(lines, "3.13")


def test_pip_arg_prefers_the_pin():
    assert ov.Req("polars", "<2,>=1.30").pip_arg({"polars": "1.44.2"}) == "polars==1.44.2"
    assert ov.Req("pooch", ">=1.1").pip_arg({}) == "pooch>=1.1"


# ---------------------------------------------------------------------------- which wheels are missing
def test_to_fetch_skips_what_the_target_has_whatever_its_version_and_says_so():
    reqs = [
        ("hawkears", ov.Req("numpy", "<2.4,>=2.0")),
        ("hawkears", ov.Req("torch", "")),
        ("hawkears", ov.Req("britekit", ">=1.8.4")),
    ]
    step = ov.to_fetch(reqs, {"numpy": "2.5.2", "torch": None}, {})
    assert step.fetch == (ov.Req("britekit", ">=1.8.4"),)
    assert step.notes == ("the target's numpy 2.5.2 is outside hawkears's <2.4,>=2.0 (kept: it is the target's)",)


def test_to_fetch_leaves_out_the_gui_and_training_extras_unless_included():
    reqs = [("hawkears", ov.Req("pyside6", "<7")), ("britekit", ov.Req("faiss-cpu", ">=1.10")), ("britekit", ov.Req("av", ""))]
    step = ov.to_fetch(reqs, {}, {})
    assert [r.name for r in step.fetch] == ["av"]
    assert any(n.startswith("left out: pyside6") for n in step.notes)
    assert [r.name for r in ov.to_fetch(reqs, {}, {}, include=["FAISS_cpu"]).fetch] == ["faiss-cpu", "av"]


def test_to_fetch_include_overrides_have_and_fetched_names_are_not_fetched_again():
    reqs = [("x", ov.Req("numpy", "")), ("y", ov.Req("soxr", ">=2")), ("z", ov.Req("soxr", ""))]
    step = ov.to_fetch(reqs, {"numpy": "2.5.2"}, {"soxr": "1.1.0"}, include=["numpy"])
    assert step.fetch == (ov.Req("numpy", ""),)
    assert step.notes == ("y wants soxr>=2; the wheel fetched is 1.1.0",)


def test_wheel_name():
    assert ov.wheel_name("polars_runtime_32-1.44.2-cp310-abi3-manylinux_2_17_x86_64.whl") == ("polars-runtime-32", "1.44.2")
    with pytest.raises(ValueError):
        ov.wheel_name("polars-1.44.2.tar.gz")


# ---------------------------------------------------------------------------- parts
def test_split_parts_fits_every_file_into_parts_at_most_the_limit():
    mib = ov.MIB
    sizes = {"polars.whl": 30 * mib, "av.whl": 23 * mib, "britekit.whl": 19 * mib, "hawkears.whl": 18 * mib}
    sizes.update({f"small{i}.whl": mib // 2 for i in range(5)})
    parts = ov.split_parts(sizes, 60 * mib)
    assert len(parts) == 2
    assert sorted(n for p in parts for n in p) == sorted(sizes)
    assert all(sum(sizes[n] for n in p) <= 60 * mib for p in parts)
    assert parts == ov.split_parts(dict(reversed(sizes.items())), 60 * mib)  # deterministic


def test_split_parts_names_a_file_larger_than_a_part():
    with pytest.raises(ValueError, match=r"big\.whl is larger than a part \(60 MiB\): raise --part-mib"):
        ov.split_parts({"big.whl": 61 * ov.MIB, "a.whl": 1}, 60 * ov.MIB)
    assert ov.split_parts({}, 1) == []


# ---------------------------------------------------------------------------- the wrapper
def _fake_python(tmp_path: Path) -> Path:
    """A 'python' that prints PYTHONPATH and its arguments (the wrapper exec's it)."""
    fake = tmp_path / "bin dir" / "py'thon"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "PYTHONPATH=$PYTHONPATH" "$@"\n')
    fake.chmod(0o755)
    return fake


def test_wrapper_text_puts_the_overlay_first_and_passes_every_argument(tmp_path):
    fake = _fake_python(tmp_path)
    overlay = tmp_path / "over lay's"
    text = ov.wrapper_text(str(fake), str(overlay))
    assert text.startswith("#!/bin/sh\n") and text.count("\n") == 5
    wrapper = tmp_path / "python"
    wrapper.write_text(text)
    wrapper.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": "/inherited"}
    out = subprocess.run([str(wrapper), "-c", "a b", "$HOME"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"PYTHONPATH={overlay}:/inherited", "-c", "a b", "$HOME"]
    env.pop("PYTHONPATH")
    out = subprocess.run([str(wrapper)], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"PYTHONPATH={overlay}"]


def test_script_header_runs_a_console_script_through_the_wrapper(tmp_path):
    wrapper = tmp_path / "my bin" / "python"
    wrapper.parent.mkdir()
    wrapper.write_text(ov.wrapper_text(sys.executable, str(tmp_path / "ov")))
    wrapper.chmod(0o755)
    script = tmp_path / "my bin" / "tool"
    script.write_text(ov.script_header(str(wrapper)) + "import os, sys\nprint(os.environ['PYTHONPATH'], sys.argv[1:])\n")
    script.chmod(0o755)
    out = subprocess.run([str(script), "x y"], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{tmp_path / 'ov'} ['x y']"


# ---------------------------------------------------------------------------- the import check's verdict
def test_check_verdict():
    ok = {"missing": [], "versions": {"torch": "2.11.0", "hawkears": "2.3.0", "britekit": "1.8.4"}}
    assert ov.check_verdict(ok, "/o/bin/python", "2.3.0") is None
    no_torch = {"missing": [["torch", "torch", "ModuleNotFoundError: No module named 'torch'"]], "versions": {}}
    line = ov.check_verdict(no_torch, "/o/bin/python", "2.3.0")
    assert "no usable torch" in line and "Fix:" in line and "\n" not in line
    lacking = {
        "missing": [
            ["hawkears", "soxr", "ModuleNotFoundError: No module named 'soxr'"],
            ["britekit.core.audio", "soxr", "ModuleNotFoundError: No module named 'soxr'"],
        ],
        "versions": {"torch": "2.11.0"},
    }
    line = ov.check_verdict(lacking, "/o/bin/python", "2.3.0")
    assert "cannot import hawkears, britekit.core.audio (missing: soxr;" in line
    assert "INCLUDE='soxr'" in line and "\n" not in line
    old = {"missing": [], "versions": {"hawkears": "2.2.0"}}
    assert "hawkears is 2.2.0, badc-mpi needs 2.3.0. Fix:" in ov.check_verdict(old, "/o/bin/python", "2.3.0")


# ---------------------------------------------------------------------------- offline end to end
def _wheel(folder: Path, name: str, requires: list[str], code: str, entry: str | None = None) -> Path:
    """A minimal pure-Python wheel written by hand (no build, no network)."""
    dist, version = name.replace("-", "_"), "0.1"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": code,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: "
        + name
        + f"\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if entry:
        files[f"{info}/entry_points.txt"] = f"[console_scripts]\n{entry} = {dist}:main\n"
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    out = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return out


def _hawkears_python() -> str:
    try:
        return hawkears_env.find_hawkears_python()
    except RunnerSetupError as exc:
        if os.environ.get("BADC_MPI_SKIP_HAWKEARS") == "1":
            skip_or_fail(f"HawkEars environment missing (BADC_MPI_SKIP_HAWKEARS=1): {exc}")
        pytest.fail(f"HawkEars environment missing: {exc}. Fix: run `make hawkears`")


def _script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.hawkears
def test_download_and_install_an_overlay_offline_onto_hawkears_python(tmp_path):
    python = _hawkears_python()
    house = tmp_path / "house"
    house.mkdir()
    _wheel(
        house,
        "badc-probe-a",
        ["badc-probe-b>=0.1", "torch", "pytest; extra == 'test'"],
        "from badc_probe_b import B\ndef main():\n    print('a', B)\n",
        "badc-probe",
    )
    _wheel(house, "badc-probe-b", ["numpy"], "B = 'b'\n")
    have = tmp_path / "have.txt"
    assert _script("have", "--python", python, "-o", str(have)).returncode == 0
    assert "hawkears==2.3.0" in have.read_text()
    dest = tmp_path / "wheels"
    done = _script(
        "download", "--have", str(have), "--dest", str(dest), "--include", "badc-probe-a", "--freeze", "none",
        "--part-mib", "1", "--pip-arg=--no-index", f"--pip-arg=--find-links={house}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan = json.loads((dest / "plan.json").read_text())
    packed = sorted(w["file"] for p in plan["parts"] for w in p["wheels"])
    assert packed == [
        "badc_probe_a-0.1-py3-none-any.whl.xz",
        "badc_probe_b-0.1-py3-none-any.whl.xz",
    ]  # nothing else: the rest is had
    overlay = tmp_path / "ov"
    done = _script("install", "--python", python, "--wheels", str(dest), "--overlay", str(overlay), timeout=600)
    assert done.returncode == 0, done.stderr
    wrapper = overlay / "bin" / "python"
    assert done.stdout.strip() == str(wrapper)
    assert "ok: " in done.stderr and "hawkears 2.3.0" in done.stderr  # the import check ran through the wrapper
    env = {"PATH": os.environ["PATH"]}
    code = "import badc_probe_a, hawkears; print(badc_probe_a.__file__)"
    out = subprocess.run([str(wrapper), "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == str(overlay / "badc_probe_a" / "__init__.py")
    out = subprocess.run([str(overlay / "bin" / "badc-probe")], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "a b"  # the console script runs through the wrapper
    assert subprocess.run([python, "-c", "import badc_probe_a"], capture_output=True, env=env).returncode != 0


def test_install_onto_a_python_without_torch_fails_in_one_line(tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    wheel = _wheel(house, "badc-probe-b", [], "B = 'b'\n")
    done = _script("install", "--python", sys.executable, "--wheels", str(wheel), "--overlay", str(tmp_path / "ov"))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("hawkears-overlay: ") and "no usable torch" in last and "Fix:" in last
    assert (tmp_path / "ov" / "badc_probe_b" / "__init__.py").is_file()  # installed; only the check failed


def test_gpu_check_python_path_wrapper_is_the_overlay_wrapper(tmp_path):
    sys.path.insert(0, str(REPO / "scripts" / "gpu"))
    try:
        from gpu_check_env import _wrapper
    finally:
        sys.path.remove(str(REPO / "scripts" / "gpu"))
    path = _wrapper(tmp_path, "/opt/py thon/bin/python3", "site dir")
    assert Path(path).read_text() == ov.wrapper_text("/opt/py thon/bin/python3", os.path.abspath("site dir"))
    assert os.access(path, os.X_OK)
