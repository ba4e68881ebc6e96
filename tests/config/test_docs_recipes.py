"""The recipes the README and the manual show are valid as written: every whole recipe (a YAML
block with task, data and teacher) validates, and every cascade section (a block starting with
`cascade:`, or with its `stages:`) passes the pre-training plan (shapes, layer maps, losses) in a
tiny recipe against a 12 x 384 BERT teacher; every one-line `student:` section builds its
student's config from that teacher."""

import re
from pathlib import Path

import pytest
import yaml
from transformers import BertConfig

from cascade_kd.cascade.plan import check_cascade
from cascade_kd.config.schema import Recipe
from tests.helpers import merge, tiny_recipe

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a multilingual-e5-small-shaped teacher (12 x 384), three labels
TEACHER = BertConfig(vocab_size=1000, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=1536, num_labels=3)


def blocks(kind):
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            block = match.group(1)
            line = text.count("\n", 0, match.start()) + 2
            whole = all(re.search(rf"^{key}:", block, re.M) for key in ("task", "data", "teacher"))
            cascade = block.lstrip().startswith("cascade:") or (
                block.lstrip().startswith(("stages:", "direct:")) and "stages:" in block)
            if (kind == "whole" and whole) or (kind == "cascade" and cascade and not whole):
                yield pytest.param(block, id=f"{page.name}:{line}")


@pytest.mark.parametrize("block", list(blocks("whole")))
def test_a_whole_recipe_in_the_docs_validates(block):
    Recipe.from_text(block)


@pytest.mark.parametrize("block", list(blocks("cascade")))
def test_the_cascades_in_the_docs_pass_the_plan(block):
    cascade = yaml.safe_load(block)
    cascade = cascade.get("cascade", cascade)
    recipe = Recipe.from_dict(merge(tiny_recipe(), {"cascade": cascade}))
    check_cascade(recipe, TEACHER)


def student_lines():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            for k, line in enumerate(match.group(1).splitlines()):
                if line.strip().startswith("student: {"):
                    number = text.count("\n", 0, match.start()) + 2 + k
                    yield pytest.param(line.strip(), id=f"{page.name}:{number}")


@pytest.mark.parametrize("line", list(student_lines()))
def test_every_student_the_docs_show_builds_from_a_teacher(line):
    from cascade_kd.config.schema import StudentConfig
    from cascade_kd.students import student_config

    student_config(TEACHER, StudentConfig(**yaml.safe_load(line)["student"]))


def test_the_docs_show_recipes():
    assert len(list(blocks("whole"))) >= 3 and len(list(blocks("cascade"))) >= 8 and len(list(student_lines())) >= 10
