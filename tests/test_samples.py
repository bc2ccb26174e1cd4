"""The shipped sample requests (server/data/samples): generated, complete, well typed, and
reachable from ``scriptgate sample``, ``scriptgate run --sample`` and the test endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson
import pytest

from server import samples
from server.catalog import TypeSpec, catalog
from server.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
INVITE = "callbackBeforeInviteJoinGroupCommand"
MEMBER = "callbackBeforeSetGroupMemberInfoCommand"
COMMANDS = sorted(catalog().commands)
RAW = orjson.loads((ROOT / "server" / "data" / "callbacks.json").read_bytes())


def unknown_keys(spec: TypeSpec, value: object, path: str) -> list[str]:
    """Keys inside ``value`` that ``spec`` does not name, at any depth (requests are open)."""
    out: list[str] = []
    if spec.kind == "list" and spec.item is not None and isinstance(value, list):
        for i, item in enumerate(value):
            out += unknown_keys(spec.item, item, f"{path}[{i}]")
    elif spec.kind == "object" and spec.fields and isinstance(value, dict):
        for key, item in value.items():
            if key in spec.fields:
                out += unknown_keys(spec.fields[key], item, f"{path}.{key}")
            else:
                out.append(f"{path}.{key}")
    return out


def test_one_sample_per_catalogue_command() -> None:
    files = sorted(p.stem for p in samples.SAMPLES_DIR.glob("*.json"))
    assert files == COMMANDS and len(files) == 52


def test_checked_in_files_are_the_generators_output(tmp_path: Path) -> None:
    generated = samples.generate_all()
    for name in COMMANDS:
        assert (samples.SAMPLES_DIR / f"{name}.json").read_bytes() == generated[name], (
            f"{name}.json differs: run python3 -m server.samples --write")
    assert samples.main(["--check"]) == 0
    # --write into an empty directory produces the same files; --check notices a change
    assert samples.main(["--write", "--dir", str(tmp_path)]) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {f"{n}.json": generated[n] for n in COMMANDS}
    (tmp_path / f"{INVITE}.json").write_text("{}\n")
    (tmp_path / "callbackNoSuchCommand.json").write_text("{}\n")
    assert samples.main(["--check", "--dir", str(tmp_path)]) == 1
    assert samples.main(["--write", "--dir", str(tmp_path)]) == 0
    assert samples.main(["--check", "--dir", str(tmp_path)]) == 0


@pytest.mark.parametrize("name", COMMANDS)
def test_sample_fits_the_catalogue_request_types(name: str) -> None:
    command = catalog().get(name)
    assert command is not None
    body = orjson.loads((samples.SAMPLES_DIR / f"{name}.json").read_bytes())
    assert body["callbackCommand"] == name
    assert command.check_request(body) is None  # what the server checks
    # stricter than the server: no unknown keys inside objects, null only where the catalogue's
    # type string says OpenIM sends it (the schema lets every list be null, as Go's decoder does)
    described = RAW[name]["request"]
    for field, spec in command.request.items():
        if field in body:
            assert unknown_keys(spec, body[field], field) == [], field
            if body[field] is None and spec.kind == "list":
                assert "|null" in described[field].split(" (")[0], field
    assert set(body) <= set(command.request), "fields the catalogue does not list"
    if name not in samples.SEEDS:
        assert list(body) == list(command.request), "every request field, in the catalogue's order"


def test_documented_examples_are_used_byte_for_byte() -> None:
    # The request examples of OpenIM's documentation (shared/seeds), as printed there.
    assert (samples.SAMPLES_DIR / f"{INVITE}.json").read_text() == (
        '{\n"callbackCommand": "callbackBeforeInviteJoinGroupCommand",\n"operationID": "1646445464564",\n'
        '"groupID": "12345",\n"reason": "friend",\n"invitedUserIDs": ["user1","user2"]\n}\n')
    assert orjson.loads((samples.SAMPLES_DIR / f"{MEMBER}.json").read_bytes()) == {
        "callbackCommand": MEMBER, "groupID": "12345", "userID": "user789", "nickName": "user",
        "faceURL": "http://example.com/path/to/face/image.png", "roleLevel": 20, "ex": "Extra data"}


SEED_PAGES = ROOT.parent / "shared" / "seeds"


@pytest.mark.skipif(not SEED_PAGES.exists(), reason="shared/seeds not beside the checkout")
def test_seed_requests_are_the_documentation_pages_examples() -> None:
    found = {}
    for page in sorted(SEED_PAGES.glob("*.txt")):
        text = page.read_text()
        heading = "Request Package Example" if "Request Package Example" in text else "Example Request Package"
        start = text.index("{", text.index(heading))
        block = text[start:text.index("\n}", start) + 2] + "\n"
        found[orjson.loads(block)["callbackCommand"]] = block
    assert found == samples.SEEDS
    for name, block in found.items():
        assert (samples.SAMPLES_DIR / f"{name}.json").read_text() == block


def test_realistic_values() -> None:
    group = samples.sample("callbackBeforeSendGroupMsgCommand")
    assert group["sessionType"] == 3 and group["groupID"] == "12345" and group["sendID"] == "user1"
    assert orjson.loads(group["content"]) == {"content": "hello, see you at 9?"} and group["contentType"] == 101
    assert group["sendTime"] > 1_600_000_000_000 and group["createTime"] <= group["sendTime"]  # int64 ms
    assert group["operationID"]
    single = samples.sample("callbackBeforeSendSingleMsgCommand")
    assert single["sessionType"] == 1 and single["recvID"] == "user2"
    assert samples.sample("callbackAfterDisMissGroupCommand")["groupType"] == "\u0002"  # Go string(int32)


def test_samples_are_package_data() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    # setuptools globs each pattern under the package directory
    shipped = {p for pattern in package_data["server"] for p in (ROOT / "server").glob(pattern)}
    assert set(samples.SAMPLES_DIR.glob("*.json")) <= shipped
    assert samples.sample_bytes(INVITE) == (samples.SAMPLES_DIR / f"{INVITE}.json").read_bytes()


# --- scriptgate sample / run --sample -------------------------------------------------------

def test_sample_command_prints_the_file_bytes() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "server.cli", "sample", INVITE], capture_output=True, env=env,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (samples.SAMPLES_DIR / f"{INVITE}.json").read_bytes() and out.stderr == b""


def test_sample_list_and_errors(capsys) -> None:
    assert main(["sample", "--list"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == COMMANDS
    assert main(["sample", "callbackNope"]) == 2
    _, err = capsys.readouterr()
    assert err == "scriptgate: unknown callbackCommand 'callbackNope' (`scriptgate sample --list` lists them)\n"
    assert main(["sample"]) == 2
    assert "sample --list" in capsys.readouterr().err
    assert main(["sample", INVITE, "--list"]) == 2
    assert capsys.readouterr().err == "scriptgate: give COMMAND or --list, not both\n"


def test_run_with_sample_uses_the_scripts_command(capsys, tmp_path: Path) -> None:
    script = tmp_path / f"{INVITE}.py"
    script.write_text("def handle(req):\n    return deny(5001, 'no', ','.join(req['invitedUserIDs']) + '@' + req['groupID'])\n")
    assert main(["run", str(script), "--sample"]) == 0
    out, err = capsys.readouterr()
    assert orjson.loads(out)["errDlt"] == "user1,user2@12345"
    assert "verdict: deny" in err
    # --command wins over the file name
    other = tmp_path / "rules.py"
    other.write_text("def handle(req):\n    return deny(5002, req['fromUserID'] + '>' + req['toUserID'])\n")
    assert main(["run", str(other), "--sample", "--command", "callbackBeforeAddFriendCommand", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["reply"]["errMsg"] == "user1>user2"


def test_run_with_sample_needs_a_command(capsys, tmp_path: Path) -> None:
    other = tmp_path / "rules.py"
    other.write_text("def handle(req):\n    return allow()\n")
    assert main(["run", str(other), "--sample"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scriptgate: --sample needs the script's command") and "--command" in err
    with pytest.raises(SystemExit) as exc:
        main(["run", str(other), "--sample", "--payload", "-"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
