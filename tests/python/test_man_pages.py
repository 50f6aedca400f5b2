"""The manual pages: shoal(1) describes exactly the commands and options of the CLI's parser
(shoal.cli.build_parser), and the pages pandoc built are read by man(1). shoald(8) and
shoald.conf(5) are checked against shoald's option table in tests/cpp/man_pages_test.cc;
systemd-analyze verify of the installed units, which reads their Documentation= pages, is
in test_systemd.py."""
import argparse
import os
import re
import shutil
import subprocess

import pytest

import shoal._build_info
from conftest import BUILD
from shoal import cli

SOURCES = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "man")
PAGES = {"shoald.8": "SHOALD", "shoald.conf.5": "SHOALD.CONF", "shoal.1": "SHOAL"}


def section(text, title):
    """The lines of `# title` up to the next heading."""
    m = re.search(rf"^# {re.escape(title)}\n(.*?)(?=^# |\Z)", text, re.M | re.S)
    assert m, f"no section {title}"
    return m.group(1)


def flags_of(parser):
    return {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}


def written_flags(text):
    return set(re.findall(r"\*\*(--?[a-z][-a-z]*)\*\*", text))


def test_shoal_1_describes_every_command_and_option_of_the_cli():
    page = open(os.path.join(SOURCES, "shoal.1.md")).read()
    parser = cli.build_parser()
    assert written_flags(section(page, "OPTIONS")) == flags_of(parser) | {"-h", "--help"}
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    described = {}  # command -> its entries' text (package has two)
    for block in re.split(r"\n(?=\*\*[a-z]+\*\*)", section(page, "COMMANDS")):
        m = re.match(r"\*\*([a-z]+)\*\*", block)
        if m:
            described[m.group(1)] = described.get(m.group(1), "") + block
    assert set(described) == set(commands)
    for name, sub in commands.items():
        assert written_flags(described[name]) == flags_of(sub), name


@pytest.mark.skipif(not shoal._build_info.MAN_PAGES, reason="this build has no manual pages: pandoc was not "
                                                            "found (scripts/setup.sh installs it)")
@pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) is not installed")
def test_the_built_pages_are_read_by_man():
    env = dict(os.environ, MANPATH=os.path.join(BUILD, "man"), MANWIDTH="100")

    def read(page):  # as a pager shows it, without the overstrikes of bold and underline
        text = subprocess.run(["man", "-P", "cat", page], env=env, capture_output=True, text=True).stdout
        return re.sub(".\x08", "", text)
    for page, title in PAGES.items():
        name, sect = page.rsplit(".", 1)
        where = subprocess.run(["man", "-w", f"{name}({sect})"], env=env, capture_output=True, text=True)
        assert where.returncode == 0, where.stderr
        assert where.stdout.strip() == os.path.join(BUILD, "man", f"man{sect}", page + ".gz")
        text = read(f"{name}({sect})")
        assert text.startswith(f"{title}({sect})")
        assert re.search(r"^shoal \d+\.\d+\.\d+ ", text.splitlines()[-1])  # the footer: the project's version
        assert "NAME" in text and "SEE ALSO" in text
    conf = read("shoald.conf(5)")
    assert "model_repository = DIR" in conf and "NAME/VERSION.pt" in conf
