"""The seed's schemas: names, defaults, enum, limits."""
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
