"""Template documents and variables: one shape for the bundled JSON and a studio's YAML,
validated whole, each problem naming the template id and the field."""

from __future__ import annotations

import copy
import pickle

import pytest
from pydantic import ValidationError

from studio.templates import (
    Template,
    TemplateFileError,
    Vocabulary,
    bundled_vocabulary,
    parse_templates,
    placeholders_of,
)


def entry(template_id="studio-yoga-001", **overrides):
    data = {
        "id": template_id,
        "niche": "yoga",
        "category": "practice",
        "tier": "capa1",
        "platforms": ["instagram", "tiktok"],
        "prompt": "the avatar holding {pose} in {studio}, {shot}",
        "hook_pattern": "Breathe with {avatar_name} {platform_tag}",
        "description": "a calm pose",
        "variables": {"pose": ["tree pose", "warrior two"]},
    }
    return {**data, **overrides}


def document(*entries, **top):
    return {
        "version": 2,
        "variables": {"shot": ["wide shot", "close-up portrait"]},
        "niche_variables": {"yoga": {"studio": ["a bright studio", "a rooftop deck", "a garden"]}},
        "templates": list(entries) or [entry()],
        **top,
    }


def refused(data, fallback=None):
    with pytest.raises(TemplateFileError) as error:
        parse_templates(data, "mine.yaml", fallback=fallback)
    return error.value


# -- placeholders and variables ---------------------------------------------------------


def test_values_come_from_template_then_niche_then_document():
    (template,), vocabulary = parse_templates(document(), "mine.yaml")
    assert template.variables == {
        "pose": ("tree pose", "warrior two"),
        "studio": ("a bright studio", "a rooftop deck", "a garden"),
        "shot": ("wide shot", "close-up portrait"),
    }
    assert template.placeholders == ("pose", "studio", "shot")
    assert template.combinations == 2 * 3 * 2
    assert vocabulary.lookup("yoga", "studio") == ("a bright studio", "a rooftop deck", "a garden")


def test_a_template_value_list_wins_over_the_niche_list():
    own = entry(variables={"pose": ["tree pose"], "studio": ["a dojo"]})
    (template,), _ = parse_templates(document(own), "mine.yaml")
    assert template.variables["studio"] == ("a dojo",)


def test_an_import_may_use_the_bundled_vocabulary():
    fitness = entry(
        "studio-fitness-001", niche="fitness", prompt="the avatar in {gym}, {outfit}, {lens}",
        variables=None,
    )
    (template,), _ = parse_templates(
        {"templates": [fitness]}, "mine.yaml", fallback=bundled_vocabulary()
    )
    bundled = bundled_vocabulary()
    assert template.variables["gym"] == bundled.niches["fitness"]["gym"]
    assert template.variables["lens"] == bundled.shared["lens"]
    # Without the fallback the same file is refused, naming the placeholder.
    problem = refused({"templates": [fitness]}).problems[0]
    assert (problem.template, problem.field) == ("studio-fitness-001", "prompt")
    assert "{gym} has no values" in problem.message


def test_every_combination_renders_once():
    (template,), _ = parse_templates(document(), "mine.yaml")
    prompts = {template.render(template.choice(i)) for i in range(template.combinations)}
    assert len(prompts) == template.combinations
    assert all("{" not in p for p in prompts)
    with pytest.raises(KeyError, match="no value for \\{pose\\}"):
        template.render({"studio": "x", "shot": "y"})


def test_example_prompts_are_filled():
    (template,), _ = parse_templates(document(), "mine.yaml")
    examples = list(template.example_prompts(3))
    assert len(examples) == 3 and len(set(examples)) == 3


def test_a_template_without_placeholders_has_one_combination():
    plain = Template.model_validate(entry(prompt="the avatar in a park", variables=None))
    assert plain.placeholders == () and plain.combinations == 1
    assert plain.render() == "the avatar in a park"


def test_variables_are_read_only_and_the_template_stays_hashable_and_picklable():
    (template,), _ = parse_templates(document(), "mine.yaml")
    with pytest.raises(TypeError, match="read-only"):
        template.variables["pose"] = ("x",)
    with pytest.raises(TypeError):
        template.variables.update({"pose": ("x",)})
    assert {template: 1}[template] == 1
    assert pickle.loads(pickle.dumps(template)) == template
    assert copy.deepcopy(template) == template
    assert Template.model_validate_json(template.model_dump_json()) == template


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("the avatar {}", "not a plain name"),
        ("the avatar {pose!r}", "not a plain name"),
        ("the avatar {pose:>10}", "not a plain name"),
        ("the avatar {pose.name}", "not a plain name"),
        ("the avatar {Pose}", "not a plain name"),
        ("the avatar {{literal}}", "literal braces"),
        ("the avatar {pose", "unbalanced"),
    ],
)
def test_placeholders_must_be_plain_names(text, match):
    with pytest.raises(ValueError, match=match):
        placeholders_of(text)


@pytest.mark.parametrize(
    ("variables", "field", "match"),
    [
        ({"pose": []}, "variables", "empty"),
        ({"pose": "tree pose"}, "variables", "give a list"),
        ({"pose": ["tree pose", "tree pose"]}, "variables", "listed twice"),
        ({"pose": ["a {brace}"]}, "variables", "without braces"),
        ({"pose": ["two\nlines"]}, "variables", "one line"),
        ({"pose": ["  "]}, "variables", "non-empty"),
        ({"pose": ["x" * 201]}, "variables", "200 characters"),
        ({"pose": ["tree pose"], "unused": ["x"]}, "variables", "'unused' is not a placeholder"),
        ({"Bad-Name": ["x"]}, "variables", "not a variable name"),
        ([["pose", "x"]], "variables", "mapping"),
    ],
)
def test_bad_variables_are_refused_naming_the_field(variables, field, match):
    problem = refused(document(entry(variables=variables))).problems[0]
    assert (problem.template, problem.field) == ("studio-yoga-001", field)
    assert match in problem.message


# -- the document -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "match"),
    [
        ({"tier": "capa4"}, "tier", "got 'capa4'"),
        ({"platforms": ["instagram", "myspace"]}, "platforms[1]", "got 'myspace'"),
        ({"platforms": []}, "platforms", "at least 1"),
        ({"colour": "blue"}, "colour", "unknown key"),
        ({"prompt": "the avatar in {nowhere}"}, "prompt", "{nowhere} has no values"),
        ({"prompt": "  "}, "prompt", "blank"),
        ({"id": "Yoga One"}, "id", "pattern"),
        ({"niche": "x" * 51}, "niche", "at most 50"),
        ({"hook_pattern": "Hi {avatar}"}, "hook_pattern", "unknown placeholders"),
    ],
)
def test_a_bad_template_is_refused_naming_id_and_field(overrides, field, match):
    error = refused(document(entry(**overrides)))
    problem = error.problems[0]
    label = overrides.get("id", "studio-yoga-001")  # a bad id is still how it is named
    assert (problem.template, problem.field) == (label, field)
    assert match in problem.message
    assert repr(label) in str(error) and repr(field) in str(error)


def test_a_missing_field_is_named():
    data = entry()
    del data["tier"]
    problem = refused(document(data)).problems[0]
    assert (problem.template, problem.field, problem.message) == (
        "studio-yoga-001", "tier", "missing (required)",
    )


def test_duplicate_ids_are_refused():
    problem = refused(document(entry(), entry())).problems[0]
    assert (problem.template, problem.field) == ("studio-yoga-001", "id")
    assert "duplicated (also entry 1)" in problem.message


def test_every_problem_is_collected_and_counted():
    error = refused(document(entry("a-1", tier="gold"), entry("a-2", platforms=["fax"])))
    assert [(p.template, p.field) for p in error.problems] == [
        ("a-1", "tier"), ("a-2", "platforms[0]"),
    ]
    assert str(error).endswith("(and 1 more problem)")


def test_an_entry_without_an_id_is_named_by_position():
    data = entry()
    del data["id"]
    problem = refused(document(entry("a-1"), data)).problems[0]
    assert (problem.template, problem.field) == ("#2", "id")


@pytest.mark.parametrize(
    ("data", "field", "match"),
    [
        ([entry()], "templates", "mapping with `templates:`"),
        ({"templates": []}, "templates", "non-empty list"),
        ({"templates": "x"}, "templates", "non-empty list"),
        ({"templates": ["x"]}, "templates", "must be a mapping"),
        ({"templates": [entry()], "extra": 1}, "extra", "unknown key"),
        ({"templates": [entry()], "version": 3}, "version", "unsupported"),
        ({"templates": [entry()], "variables": ["shot"]}, "variables", "mapping"),
        ({"templates": [entry()], "variables": {"shot": []}}, "variables.shot", "empty"),
        ({"templates": [entry()], "niche_variables": ["yoga"]}, "niche_variables", "mapping"),
        (
            {"templates": [entry()], "niche_variables": {"yoga": {"Bad": ["x"]}}},
            "niche_variables.yoga.Bad",
            "not a variable name",
        ),
    ],
)
def test_a_bad_document_is_refused_naming_the_key(data, field, match):
    problem = refused(data).problems[0]
    assert problem.field == field
    assert match in problem.message


def test_the_vocabulary_lists_what_a_niche_can_use():
    vocabulary = Vocabulary(shared={"shot": ("a",)}, niches={"yoga": {"pose": ("b",)}})
    assert vocabulary.names("yoga") == ["pose", "shot"]
    assert vocabulary.names("food") == ["shot"]
    assert vocabulary.lookup("food", "pose") is None


def test_model_validation_errors_keep_their_pydantic_type():
    with pytest.raises(ValidationError):
        Template.model_validate(entry(variables={"pose": []}))
