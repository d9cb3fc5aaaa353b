"""GSM 03.38 / UCS-2 detection, unit counts and segment arithmetic."""

from __future__ import annotations

import dataclasses

import pytest

from premium.sms.encoding import GSM7, UCS2, SmsEncoding, analyse


def test_gsm7_basic_text() -> None:
    assert analyse("Hello John, thank you!") == SmsEncoding(GSM7, 22, 1, 22)


def test_gsm7_basic_alphabet_beyond_ascii() -> None:
    text = "@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤!¡¿ÄÖÑÜ§äöñüà\r\n"
    result = analyse(text)
    assert result.encoding == GSM7
    assert result.units == len(text)


@pytest.mark.parametrize("ch", ["€", "[", "]", "{", "}", "^", "~", "\\", "|", "\f"])
def test_extension_characters_count_two_septets(ch: str) -> None:
    result = analyse(f"a{ch}b")
    assert (result.encoding, result.units, result.characters) == (GSM7, 4, 3)


def test_all_extension_characters_together() -> None:
    assert analyse("€[]{}^~\\|").units == 18


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_segment_boundaries(length: int, segments: int) -> None:
    result = analyse("a" * length)
    assert (result.encoding, result.units, result.segments) == (GSM7, length, segments)


def test_gsm7_extension_character_crosses_the_single_segment_limit() -> None:
    assert analyse("a" * 158 + "€").segments == 1  # 160 septets
    assert analyse("a" * 159 + "€").segments == 2  # 161 septets


def test_gsm7_escape_sequence_is_never_split_across_segments() -> None:
    # 306 septets would be 2 × 153, but the € straddles the boundary and moves whole to part 2.
    result = analyse("a" * 152 + "€" + "a" * 152)
    assert (result.units, result.segments) == (306, 3)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_segment_boundaries(length: int, segments: int) -> None:
    result = analyse("ש" * length)
    assert (result.encoding, result.units, result.segments) == (UCS2, length, segments)


def test_hebrew_is_ucs2() -> None:
    assert analyse("שלום").encoding == UCS2


def test_one_non_gsm_character_makes_the_whole_message_ucs2() -> None:
    result = analyse("a" * 100 + "ë")  # ë is not in GSM 03.38
    assert (result.encoding, result.units, result.segments) == (UCS2, 101, 2)
    assert analyse("Zoë").encoding == UCS2
    assert analyse("it’s").encoding == UCS2  # typographic apostrophe


def test_extension_characters_count_one_unit_in_ucs2() -> None:
    assert analyse("€ש").units == 2


def test_emoji_counts_two_utf16_units() -> None:
    result = analyse("😀")
    assert (result.encoding, result.units, result.segments, result.characters) == (UCS2, 2, 1, 1)
    assert analyse("ש" * 68 + "😀").segments == 1  # 70 units
    assert analyse("ש" * 69 + "😀").segments == 2  # 71 units


def test_surrogate_pair_is_never_split_across_segments() -> None:
    result = analyse("ש" * 66 + "😀" + "ש" * 66)
    assert (result.units, result.segments) == (134, 3)


def test_literal_escape_character_is_not_gsm7() -> None:
    # The codec maps ESC to the escape byte itself, which the handset would read as a prefix.
    assert analyse("a\x1bb").encoding == UCS2


def test_empty_text_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        analyse("")


def test_non_string_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        analyse(b"abc")  # type: ignore[arg-type]


def test_lone_surrogate_is_an_error() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        analyse("a\ud800")


def test_result_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        analyse("a").units = 5  # type: ignore[misc]


def test_gsm_codec_is_registered() -> None:
    assert "a€".encode("gsm03.38") == b"a\x1be"
