"""The request contract: prompt syntax, seeds and bounds with messages that say what to fix."""

import pytest
from pydantic import ValidationError

from ml_backend.protocol import (
    GenerationRequest,
    Progress,
    Result,
    WeightedPrompt,
    parse_prompt,
    seed_to_int,
)
from ml_backend.text import line_safe_json, parse_decimal, plain_text


def test_weighted_prompt_syntax() -> None:
    assert parse_prompt("blue hair, smile:1 | hat:-0.5 | glasses") == [
        WeightedPrompt(text="blue hair, smile", weight=1.0),
        WeightedPrompt(text="hat", weight=-0.5),
        WeightedPrompt(text="glasses", weight=1.0),
    ]
    # a colon that is not followed by a number is part of the text
    assert parse_prompt("ratio 16:9 poster")[0].text == "ratio 16:9 poster"


def test_negative_prompt_parts_count_against() -> None:
    req = GenerationRequest(prompt="smile", negative_prompt="hat | glasses:2")
    assert [(p.text, p.weight) for p in req.weighted_prompts()] == [
        ("smile", 1.0), ("hat", -0.5), ("glasses", -2.0)]


def test_no_prompt_means_random_sample() -> None:
    assert GenerationRequest().is_sample
    assert not GenerationRequest(prompt="smile").is_sample
    assert not GenerationRequest(image_prompt=b"\x89PNG").is_sample


def test_string_seeds_are_stable_names() -> None:
    assert seed_to_int("Asuka") == seed_to_int("Asuka") != seed_to_int("Rei")
    assert seed_to_int("42") == 42
    assert 0 <= seed_to_int("Asuka") < 2**63


# str.isdigit() is true for all of these; int() refuses most of them
UNICODE_DIGITS = ["²", "¹²³", "①", "٣", "१२", "𝟙", "⁰", "½", "Ⅻ", "٠٠٧"]


@pytest.mark.parametrize("text", UNICODE_DIGITS)
def test_unicode_digits_are_names_not_numbers(text: str) -> None:
    assert parse_decimal(text) is None
    seed = seed_to_int(text)  # a name: hashed, never int()-ed
    assert 0 <= seed < 2**63 and seed == seed_to_int(text)
    assert GenerationRequest(prompt="x", seed=text).seed == text


@pytest.mark.parametrize("text", ["+1", "-1", " 1", "1 ", "1_000", "0x1f", "1e3", "", "9" * 20])
def test_only_plain_ascii_digits_are_decimal(text: str) -> None:
    assert parse_decimal(text) is None


def test_decimal_numbers() -> None:
    assert parse_decimal("007") == 7 and parse_decimal("0") == 0
    assert parse_decimal("9" * 19) == int("9" * 19)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\n", "\r", "\t", "\v", "\f"])
def test_line_and_paragraph_breaks_in_text_become_spaces(separator: str) -> None:
    request = GenerationRequest(prompt=f"cat{separator}ears", negative_prompt=f"a{separator}b",
                                seed=f"Asu{separator}ka")
    assert request.prompt == "cat ears" and request.negative_prompt == "a b"
    assert request.seed == "Asu ka"
    assert len(request.model_dump_json().splitlines()) == 1


@pytest.mark.parametrize("control", ["\x00", "\x1b", "\x1c", "\x85", "\x7f"])
def test_other_control_characters_are_refused(control: str) -> None:
    with pytest.raises(ValidationError, match="control character"):
        GenerationRequest(prompt=f"cat{control}ears")
    assert plain_text("fine") == "fine"


def test_json_lines_stay_one_line_whatever_they_carry() -> None:
    import json

    document = json.dumps({"error": "a\u2028b\x85c\u2029d"}, ensure_ascii=False)
    safe = line_safe_json(document)
    assert len(safe.splitlines()) == 1 and json.loads(safe) == json.loads(document)


@pytest.mark.parametrize(("fields", "location", "message"), [
    ({"steps": 0}, "steps", "greater than or equal to 1"),
    ({"steps": 5000}, "steps", "less than or equal to 500"),
    ({"psi": 2.5}, "psi", "less than or equal to 2"),
    ({"psi": -0.1}, "psi", "greater than or equal to 0"),
    ({"cutouts": 0}, "cutouts", "greater than or equal to 1"),
    ({"prompt": "x" * 1001}, "prompt", "at most 1000 characters"),
    ({"prompt": "a:0"}, "", "weight of 0 has no effect"),
    ({"prompt": "a", "prompts": [{"text": "b"}]}, "", "either 'prompt' or 'prompts'"),
    ({"seed": -1}, "seed", "between 0 and"),
    ({"upscale": 3}, "upscale", "1, 2 or 4"),
    ({"model": "../etc"}, "model", "should match pattern"),
    ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
])
def test_bounds_say_what_to_fix(fields: dict, location: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        GenerationRequest(**fields)
    text = str(info.value)
    assert message in text
    assert location in text


def test_messages_round_trip_as_json() -> None:
    req = GenerationRequest(prompt="smile", image_prompt=b"\x00\x01binary", seed="Asuka")
    assert GenerationRequest.model_validate_json(req.model_dump_json()) == req
    res = Result(png=b"\x89PNG", width=1, height=1, seed=3, model="m", psi=1.0, steps=1,
                 demo_weights=True)
    assert Result.model_validate_json(res.model_dump_json()).png == b"\x89PNG"
    assert Progress.model_validate_json(Progress(step=1, total=2, score=0.1).model_dump_json())


def test_users_see_their_own_mistakes_but_not_internal_errors() -> None:
    from ml_backend.protocol import Failure

    own = Failure(code="invalid_request", message="prompt is longer than CLIP's 77 tokens")
    assert own.public_message == own.message
    inside = Failure(code="internal", message="RuntimeError: CUDA error at 0x7f3a /opt/ray/x.py")
    assert inside.public_message == "the image service failed on this job"
    for code in ("timeout", "busy", "unavailable", "cancelled"):
        leaked = Failure(code=code, message="Traceback at /srv/secret")
        assert "/srv" not in leaked.public_message


def test_a_samples_latent_depends_on_the_seed_alone_and_is_standard_normal() -> None:
    from statistics import fmean, pstdev

    from ml_backend.protocol import MAX_SEED, sample_latent

    assert sample_latent(7, 512) == sample_latent(7, 512)      # any process, any side
    assert sample_latent(7, 512)[:100] == sample_latent(7, 100)
    assert sample_latent(7, 512) != sample_latent(8, 512)
    values = sample_latent(MAX_SEED, 50_000)
    assert abs(fmean(values)) < 0.02 and abs(pstdev(values) - 1) < 0.02
    for bad in (-1, MAX_SEED + 1):
        with pytest.raises(ValueError, match="seed must be in"):
            sample_latent(bad, 4)
