"""Per-class descriptions end to end: the toy world's, and tools/describe_classes.py against a local chat server."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vlprompt.data import ImageSplitDataModule
from vlprompt.toy.world import _UNINFORMATIVE, DATASETS, DESCRIPTIONS, describe_classes, write_toy_dataset

from conftest import REPO  # noqa: E402

spec = importlib.util.spec_from_file_location("describe_classes", REPO / "tools" / "describe_classes.py")
describe_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(describe_tool)


@pytest.mark.parametrize("name", [n for n in DATASETS])
def test_toy_descriptions_describe_every_class_with_facts_and_noise(name):
    described = describe_classes(name)
    assert list(described) == [classname for classname, _ in DATASETS[name].classes()]
    everywhere = set.intersection(*map(set, described.values()))
    assert everywhere  # the data set's style: true of every class, tells none apart
    for classname, sentences in described.items():
        assert len(sentences) >= 5
        # Some sentences are true of any class (noise to filter), the rest tell the class apart.
        noise = [s for s in sentences if s in everywhere or s in _UNINFORMATIVE]
        assert len(noise) >= 3 and len(sentences) - len(noise) >= 2
    assert len({frozenset(s) for s in described.values()}) == len(described)
    assert described == describe_classes(name)  # deterministic


def test_toy_data_sets_ship_descriptions_and_configs_read_them(tmp_path):
    write_toy_dataset("ToyShapes", tmp_path, train_per_class=1, val_per_class=1, test_per_class=1)
    assert json.loads((tmp_path / DESCRIPTIONS).read_text()) == describe_classes("ToyShapes")
    for config in (REPO / "configs" / "data" / "toy").glob("*.yaml"):
        assert f"descriptions: {DESCRIPTIONS}" in config.read_text(), config
    data = ImageSplitDataModule(tmp_path, split_file="split_zhou_ToyShapes.json", descriptions=DESCRIPTIONS,
                                subsample="novel")
    assert list(data.class_descriptions) == data.classnames


class ChatServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that answers numbered sentences naming the class."""

    def __init__(self, status: int = 200):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                prompt = body["messages"][-1]["content"]
                if "attributes" in prompt:
                    answer = "1. Colour\n2. shape.\n- Texture\n4. colour\n5. size\n6. material"
                else:
                    name = prompt.split("a ", 1)[1].split(" looks", 1)[0]
                    answer = "\n".join(f"{i}. A {name} has feature {i}." for i in range(1, 8))
                payload = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
                data = json.dumps(payload if status == 200 else {"error": {"message": "bad key"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat_server():
    server = ChatServer()
    yield server
    server.close()


def run_tool(*args):
    describe_tool.main([str(a) for a in args])


def test_describe_classes_writes_parsed_sentences_and_resumes(chat_server, tmp_path, monkeypatch):
    names = tmp_path / "names.txt"
    names.write_text("red fox\nsea turtle\n\n")
    out = tmp_path / "descriptions.json"
    monkeypatch.setenv("TEST_KEY", "secret")
    common = ["--classnames", names, "--out", out, "--base-url", chat_server.url, "--model", "m",
              "--api-key-env", "TEST_KEY", "--sentences", "3"]
    run_tool(*common)
    written = json.loads(out.read_text())
    assert written == {name: [f"A {name} has feature {i}." for i in (1, 2, 3)] for name in ("red fox", "sea turtle")}
    assert [r["path"] for r in chat_server.requests] == ["/v1/chat/completions"] * 2
    assert all(r["auth"] == "Bearer secret" and r["body"]["model"] == "m" for r in chat_server.requests)
    # Resumable: described classes are kept and not asked again; a new class is added.
    names.write_text("red fox\nsea turtle\ntabby cat\n")
    run_tool(*common)
    assert len(chat_server.requests) == 3
    assert list(json.loads(out.read_text())) == ["red fox", "sea turtle", "tabby cat"]
    assert not list(tmp_path.glob("*.partial"))


def test_describe_classes_proposes_candidate_attributes_for_the_attribute_search(chat_server, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("red fox\nsea turtle\n")
    out = tmp_path / "candidates.txt"
    run_tool("--classnames", names, "--out", out, "--base-url", chat_server.url, "--model", "m", "--attributes", "4")
    assert out.read_text() == "colour\nshape\ntexture\nsize\n"  # lower case, deduplicated, the first four
    assert len(chat_server.requests) == 1  # one question for all classes
    assert "red fox, sea turtle" in chat_server.requests[0]["body"]["messages"][-1]["content"]
    with pytest.raises(SystemExit) as stopped:  # never overwritten
        run_tool("--classnames", names, "--out", out, "--base-url", chat_server.url, "--model", "m", "--attributes", "4")
    assert "exists; choose another --out" in str(stopped.value.code)


def test_describe_classes_fails_in_one_line(chat_server, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("red fox\n")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    out = tmp_path / "d.json"
    with pytest.raises(SystemExit) as exit_info:
        run_tool("--classnames", names, "--out", out, "--base-url", closed, "--model", "m", "--timeout", "5")
    message = str(exit_info.value.code)
    assert message.startswith("describe_classes: error: cannot reach") and "--base-url" in message
    assert "\n" not in message and not out.exists()
    # A damaged output file is kept and refused, not overwritten.
    out.write_text("not json")
    with pytest.raises(SystemExit) as exit_info:
        run_tool("--classnames", names, "--out", out, "--base-url", chat_server.url, "--model", "m")
    assert "is not a descriptions JSON" in str(exit_info.value.code) and out.read_text() == "not json"


def test_describe_classes_names_the_key_on_an_authorisation_error(tmp_path):
    server = ChatServer(status=401)
    try:
        names = tmp_path / "names.txt"
        names.write_text("red fox\n")
        with pytest.raises(SystemExit) as exit_info:
            run_tool("--classnames", names, "--out", tmp_path / "d.json", "--base-url", server.url, "--model", "m",
                     "--api-key-env", "NO_SUCH_KEY_VARIABLE")
        assert "HTTP 401" in str(exit_info.value.code) and "$NO_SUCH_KEY_VARIABLE" in str(exit_info.value.code)
    finally:
        server.close()


def test_describe_classes_reads_class_names_from_a_data_config(chat_server, tmp_path):
    write_toy_dataset("ToyPatterns", tmp_path / "ToyPatterns", train_per_class=1, val_per_class=1, test_per_class=1)
    out = tmp_path / "d.json"
    run_tool("--data", REPO / "configs" / "data" / "toy" / "ToyPatterns.yaml", "--root", tmp_path / "ToyPatterns",
             "--out", out, "--base-url", chat_server.url, "--model", "m", "--sentences", "2")
    assert list(json.loads(out.read_text())) == list(describe_classes("ToyPatterns"))
