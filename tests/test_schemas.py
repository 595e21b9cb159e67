"""The seed's schemas: names, types, required fields, defaults, enum and limits, checked against
the hosted service's published schema."""
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from flashhead import constants as C
from flashhead.pipeline import request_from_input
from flashhead.schemas import FlashHeadAudioRequest, FlashHeadRequest


def test_text_request_defaults():
    r = request_from_input({"image_url": "x.png", "text": "hi"}, C.TEXT_ENDPOINT)
    assert isinstance(r, FlashHeadRequest)
    assert (r.voice, r.stability, r.seed) == ("Aria", 0.5, None)


def test_audio_endpoint_selects_audio_model():
    r = request_from_input({"image_url": "x.png", "audio_url": "a.wav", "seed": 3}, C.AUDIO_ENDPOINT)
    assert isinstance(r, FlashHeadAudioRequest) and r.seed == 3


def test_voice_enum_is_the_seed_list():
    schema = FlashHeadRequest.model_json_schema()
    assert schema["$defs"]["VoiceEnum"]["enum"] == list(C.VOICES)
    assert len(C.VOICES) == 20


@pytest.mark.parametrize("payload, field", [
    ({"image_url": "x", "text": "   "}, "text"),
    ({"image_url": "x", "text": "a" * (C.MAX_TEXT_CHARS + 1)}, "text"),
    ({"image_url": "x", "text": "hi", "voice": "Nobody"}, "voice"),
    ({"image_url": "x", "text": "hi", "stability": 1.5}, "stability"),
    ({"text": "hi"}, "image_url"),
])
def test_bad_input_names_the_field(payload, field):
    with pytest.raises(ValidationError) as exc:
        request_from_input(payload, C.TEXT_ENDPOINT)
    assert exc.value.errors()[0]["loc"] == (field,)


def test_unknown_voice_message_lists_valid_names():
    with pytest.raises(ValidationError) as exc:
        request_from_input({"image_url": "x", "text": "hi", "voice": "Nobody"}, C.TEXT_ENDPOINT)
    assert "Aria" in str(exc.value) and "Bill" in str(exc.value)


def test_output_schema_fields():
    from flashhead.schemas import FlashHeadResponse

    props = FlashHeadResponse.model_json_schema()["properties"]
    assert set(props) == {"video", "seed", "duration", "timings"}


# ---- against the hosted service's published schema ------------------------------------------

SEED_PAGE = Path(__file__).parent / "reference" / "seed-fal-flashhead-schema.txt"   # the page's Schema part
SECTIONS = {"Input": "FlashHeadRequest", "Output": "FlashHeadResponse", "FlashHeadAudioRequest":
            "FlashHeadAudioRequest", "FlashHeadAudioResponse": "FlashHeadAudioResponse", "File": "File"}
FIELD = re.compile(r"^(\w+) (\w+)(\*)?(?: required)?$")
JSON_TYPES = {"string": "string", "integer": "integer", "float": "number"}


def published_schema() -> dict[str, dict[str, dict]]:
    """{model: {field: {type, required, default?, enum?}}} parsed from the page's "Schema" part."""
    text = SEED_PAGE.read_text().split("5. Schema#", 1)[1].split("Related Models", 1)[0]
    models, model, field = {}, None, None
    for line in (" ".join(raw.split()) for raw in text.splitlines()):     # NBSPs -> spaces
        if line.endswith("#"):
            model = SECTIONS.get(line[:-1])
            if model:
                models[model] = {}
            field = None
        elif model and (m := FIELD.match(line)):
            field = models[model][m[1]] = {"type": m[2], "required": bool(m[3])}
        elif field is not None and "Default value: " in line:
            field["default"] = json.loads(line.split("Default value: ", 1)[1])
        elif field is not None and line.startswith("Possible enum values: "):
            field["enum"] = line.split(": ", 1)[1].split(", ")
    return models


def _ours(model: str) -> dict:
    import flashhead.schemas as S
    return getattr(S, model).model_json_schema()


def _type_of(prop: dict, defs: dict) -> str:
    """The seed page's name for a JSON-schema property's type (optional = `X | None`)."""
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    assert len(options) == 1, prop
    (opt,) = options
    if "$ref" in opt:
        return opt["$ref"].rsplit("/", 1)[1]
    return {v: k for k, v in JSON_TYPES.items()}[opt["type"]]


def test_the_published_schema_parses():
    pub = published_schema()
    assert set(pub) == set(SECTIONS.values())
    assert pub["FlashHeadRequest"]["voice"] == {"type": "VoiceEnum", "required": False, "default": "Aria",
                                                "enum": list(C.VOICES)}
    assert sum(len(fields) for fields in pub.values()) == 5 + 4 + 3 + 4 + 4


@pytest.mark.parametrize("model", sorted(SECTIONS.values()))
def test_models_match_the_published_schema(model):
    """Same fields, types, required set, defaults and enum values as the hosted service."""
    published, ours = published_schema()[model], _ours(model)
    defs = ours.get("$defs", {})
    assert set(ours["properties"]) == set(published), model
    assert set(ours.get("required", [])) == {f for f, p in published.items() if p["required"]}, model
    for name, pub in published.items():
        prop = ours["properties"][name]
        assert _type_of(prop, defs) == pub["type"], (model, name, prop)
        if "default" in pub:
            assert prop.get("default") == pub["default"], (model, name, prop)
        elif not pub["required"]:
            assert prop.get("default") is None, (model, name, prop)      # optional, no value
        if "enum" in pub:
            assert defs[pub["type"]]["enum"] == pub["enum"], (model, name)
    if model.endswith("Request"):          # what a caller may send is what the page documents
        minimal = {f: "x" for f, p in published.items() if p["required"]}
        import flashhead.schemas as S
        parsed = getattr(S, model)(**{**minimal, **({"text": "hi"} if "text" in minimal else {})})
        for name, pub in published.items():
            if not pub["required"]:
                assert getattr(parsed, name) == pub.get("default"), (model, name)
