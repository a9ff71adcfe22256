#!/usr/bin/env python
"""Write per-class descriptions (the ``data.descriptions`` JSON) from an OpenAI-compatible chat endpoint.

    python tools/describe_classes.py --data configs/data/DTD.yaml --out data/dtd/descriptions.json \\
        --base-url https://api.openai.com/v1 --model gpt-4o-mini          # key from $OPENAI_API_KEY
    python tools/describe_classes.py --classnames names.txt --out descriptions.json \\
        --base-url http://127.0.0.1:8000/v1 --model llama-3.1-8b-instruct --sentences 10

Class names come from a data config (its split file: the data set must be in place; ``--root`` overrides the
config's root) or from a text file with one name per line. Each class is asked for ``--sentences`` sentences with
``--prompt`` (``{classname}`` and ``{sentences}`` are filled in); the answer is split into one sentence per line,
list markers removed. The file is rewritten after every class, and classes it already describes are kept, so an
interrupted run goes on where it stopped. Then train with ``--data.descriptions <out>``.

With ``--attributes N`` it asks instead, once for all class names, for N general attributes that tell the classes
apart (one noun each, as ATPrompt asked GPT-4o for its candidates) and writes them one per line: the candidates
file of ``tools/search_attributes.py``.

    python tools/describe_classes.py --data configs/data/DTD.yaml --attributes 5 --out dtd-candidates.txt \
        --base-url https://api.openai.com/v1 --model gpt-4o-mini
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_PROMPT = ("Describe what a {classname} looks like in a photo, as {sentences} short sentences, one per line. "
                  "Name visual features: shape, colour, parts, texture, typical surroundings.")
SYSTEM = "You write short, factual visual descriptions of object categories. Answer with sentences only."
ATTRIBUTES_PROMPT = ("These are the classes of an image classification data set: {classnames}. Name {count} general "
                     "and independent attributes that tell these classes apart, each one noun, one per line.")
#: A leading list marker: "1.", "2)", "-", "*", "•".
LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s*")


class DescribeError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def read_classnames(options) -> list[str]:
    if options.classnames:
        if not options.classnames.is_file():
            raise DescribeError(f"{options.classnames} does not exist; --classnames is a text file, one name per line")
        names = [line.strip() for line in options.classnames.read_text().splitlines() if line.strip()]
    else:
        import yaml

        from vlprompt.data import ImageSplitDataModule
        from vlprompt.errors import ConfigError

        if not options.data.is_file():
            raise DescribeError(f"{options.data} does not exist; --data is a data YAML such as configs/data/DTD.yaml")
        data = dict((yaml.safe_load(options.data.read_text()) or {}).get("data") or {})
        if options.root:
            data["root"] = str(options.root)
        data.pop("descriptions", None)  # the file this tool writes need not exist yet
        try:
            names = list(ImageSplitDataModule(**data).classnames)
        except ConfigError as err:
            raise DescribeError(str(err)) from None
    if not names:
        raise DescribeError("no class names to describe")
    return names


def read_existing(path: Path) -> dict[str, list[str]]:
    """What ``path`` already describes (empty when it does not exist); a damaged file is an error, not replaced."""
    if not path.exists():
        return {}
    try:
        found = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DescribeError(f"{path} exists and is not a descriptions JSON; move it away or choose another --out") \
            from None
    if not isinstance(found, dict) or not all(isinstance(v, list) for v in found.values()):
        raise DescribeError(f"{path} exists and is not a descriptions JSON; move it away or choose another --out")
    return found


def parse_sentences(text: str, count: int) -> list[str]:
    """The first ``count`` non-empty lines of a chat answer, list markers and quotes removed."""
    lines = (LIST_MARKER.sub("", line).strip().strip('"').strip() for line in text.splitlines())
    return [line for line in lines if line][:count]


def ask(options, classname: str, key: str | None) -> list[str]:
    """One chat completion for ``classname``; its sentences."""
    prompt = options.prompt.format(classname=classname, sentences=options.sentences)
    sentences = parse_sentences(chat(options, prompt, key, repr(classname)) or "", options.sentences)
    if not sentences:
        raise DescribeError(f"the answer for {classname!r} held no sentence; try another --prompt or --model")
    return sentences


def propose_attributes(options, classnames: list[str], key: str | None) -> list[str]:
    """One chat completion for every class name at once: ``--attributes`` attribute words (lower case, one each)."""
    prompt = ATTRIBUTES_PROMPT.format(classnames=", ".join(classnames), count=options.attributes)
    words = []
    for line in parse_sentences(chat(options, prompt, key, "the attributes") or "", 10 * options.attributes):
        word = line.rstrip(".").strip().lower()
        if word and len(word.split()) <= 2 and word not in words:
            words.append(word)
    if len(words) < 2:
        raise DescribeError("the answer held fewer than two attribute words (one noun per line); try another --model")
    return words[:options.attributes]


def chat(options, prompt: str, key: str | None, what: str) -> str:
    """The content of one chat completion of ``prompt`` (``what`` names the question in errors)."""
    body = {"model": options.model, "temperature": options.temperature,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]}
    request = urllib.request.Request(options.base_url.rstrip("/") + "/chat/completions", method="POST",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=options.timeout) as response:
            answer = json.loads(response.read().decode())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:200].replace("\n", " ")
        hint = (f"; set ${options.api_key_env} to a valid key" if err.code in (401, 403) else "")
        raise DescribeError(f"{options.base_url} answered HTTP {err.code} for {what}: {detail}{hint}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise DescribeError(f"cannot reach {options.base_url} ({reason}); check --base-url and that the server is "
                            "running") from None
    except json.JSONDecodeError:
        raise DescribeError(f"{options.base_url} did not answer with JSON; is it an OpenAI-compatible /v1 "
                            "endpoint?") from None
    try:
        return answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise DescribeError(f"{options.base_url} answered without choices[0].message.content; is it an "
                            "OpenAI-compatible chat endpoint?") from None


def write_atomically(path: Path, described: dict[str, list[str]]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(described, indent=1, ensure_ascii=False) + "\n")
    partial.replace(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="data YAML whose class names to describe")
    source.add_argument("--classnames", type=Path, help="text file of class names, one per line")
    parser.add_argument("--root", type=Path, help="data set directory (overrides the data YAML's root)")
    parser.add_argument("--out", type=Path, required=True,
                        help="descriptions JSON to write (kept and extended); with --attributes, the candidates file")
    parser.add_argument("--attributes", type=int,
                        help="instead of descriptions: ask for this many attribute words for all classes at once (the "
                             "candidates of tools/search_attributes.py)")
    parser.add_argument("--base-url", required=True, help="OpenAI-compatible API root, e.g. https://api.openai.com/v1")
    parser.add_argument("--model", required=True, help="chat model name")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="environment variable holding the API key (none needed by most local servers)")
    parser.add_argument("--sentences", type=int, default=5, help="sentences per class")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="user prompt; {classname} and {sentences} are filled in")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")
    options = parser.parse_args(argv)
    try:
        if options.sentences < 1:
            raise DescribeError(f"--sentences must be at least 1, got {options.sentences}")
        try:
            options.prompt.format(classname="x", sentences=1)
        except (KeyError, IndexError, ValueError) as err:
            raise DescribeError(f"--prompt may use only {{classname}} and {{sentences}} ({err!r})") from None
        names = read_classnames(options)
        if options.attributes is not None:
            if options.attributes < 2:
                raise DescribeError(f"--attributes must be at least 2, got {options.attributes}")
            if options.out.exists():
                raise DescribeError(f"{options.out} exists; choose another --out (it is not overwritten)")
            words = propose_attributes(options, names, os.environ.get(options.api_key_env))
            options.out.parent.mkdir(parents=True, exist_ok=True)
            options.out.write_text("\n".join(words) + "\n")
            print(f"describe_classes: wrote {len(words)} candidate attributes to {options.out} ({', '.join(words)}); "
                  f"search them with python tools/search_attributes.py --candidates {options.out}")
            return
        described = read_existing(options.out)
        todo = [name for name in names if not described.get(name)]
        key = os.environ.get(options.api_key_env)
        print(f"describe_classes: {len(names) - len(todo)} of {len(names)} classes already in {options.out}; "
              f"asking {options.model} for {len(todo)}", flush=True)
        options.out.parent.mkdir(parents=True, exist_ok=True)
        for done, name in enumerate(todo, 1):
            described[name] = ask(options, name, key)
            write_atomically(options.out, described)
            print(f"[{done}/{len(todo)}] {name}: {len(described[name])} sentences", flush=True)
    except DescribeError as err:
        sys.exit(f"describe_classes: error: {err}")
    print(f"describe_classes: wrote {options.out}; train with --data.descriptions {options.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
