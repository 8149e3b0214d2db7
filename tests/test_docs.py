"""The README and the docs speak of the project to its users: a README of at most 10 KB whose
links resolve, and no text (docs, benchmarks, code) that cites what a reader cannot open:
issue numbers, commit hashes, private notes, or the machines and workflow it was built with."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

TEXTS = sorted(
    p for pattern in ('README.md', 'docs/*.md', 'benchmarks/*.md', 'benchmarks/*.py',
                      'alexnet_jax/**/*.py', 'configs/*.py', 'launch.py')
    for p in ROOT.glob(pattern))

BUILD_TALK = re.compile(
    r'\bissues? #?\d+|\bcommits? [0-9a-f]{7,40}\b|\bHEAD [0-9a-f]{7,40}\b|\([0-9a-f]{7}\)'
    r'|\bsessions?\b|\blent\b|\$OUT\b|\bnotes? \d{3}\b', re.IGNORECASE)


@pytest.mark.parametrize('path', TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_build_process_talk(path):
    found = [f'{i}: {line.strip()}' for i, line in enumerate(path.read_text().splitlines(), 1)
             if BUILD_TALK.search(line) and not any(  # An external repository's commit: citable.
                 site in line for site in ('github.com', 'code.google.com'))]
    assert not found, found


def test_the_pattern_finds_what_it_should():
    for text in ('see issue 35', 'at commit 3d3ae34', 'no GPU lent', 'in this session',
                 'to $OUT/check.json', 'seed note 002', 'before (68bacdd)'):
        assert BUILD_TALK.search(text), text
    for text in ('alexnet-owt-7be5be79.pth', 'the lens', 'tissue 3', 'small helpers'):
        assert not BUILD_TALK.search(text), text


def test_readme_is_a_short_front_door():
    readme = ROOT / 'README.md'
    assert readme.stat().st_size <= 10 * 1024
    text = readme.read_text()
    for link in re.findall(r'\]\(([^)#]+)(?:#[^)]*)?\)', text):
        assert (ROOT / link).exists(), link
    assert 'launch.py --config=configs/alexnet.py:digits' in text  # The first command.
