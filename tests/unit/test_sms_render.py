"""Rendering of the premium appreciation SMS: languages, fallback, hostile names, legal text, limits."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from premium.paths import include_dir
from premium.sms.render import (
    LEGAL_MARKERS,
    MAX_FIRST_NAME_UNITS,
    RenderedSms,
    SegmentLimitExceeded,
    SmsRenderer,
    SmsTemplateError,
    check_segment_limit,
    clean_first_name,
    normalise_language,
)

TEMPLATES_DIR = include_dir() / "templates" / "sms"
TEMPLATE_FILES = sorted(TEMPLATES_DIR.glob("premium_appreciation.*.j2"))
HE_OPT_OUT = "להסרה השב/י הסר"
EN_OPT_OUT = "To opt out reply STOP"
AR_TEMPLATE = (
    "إعلان: {{ bank_name }}\nمرحبا{% if first_name %} {{ first_name }}{% endif %}، نقدر ولاءك.\nللإلغاء أرسل STOP\n"
)


@pytest.fixture(scope="module")
def renderer() -> SmsRenderer:
    return SmsRenderer()


@pytest.fixture
def templates_copy(tmp_path: Path) -> Path:
    for path in TEMPLATE_FILES:
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# --- languages -----------------------------------------------------------------------------------


def test_hebrew_is_the_default(renderer: SmsRenderer) -> None:
    sms = renderer.render("נועה", "he")
    assert (sms.language_used, sms.template_id, sms.encoding) == ("he", "premium_appreciation.he", "UCS-2")
    assert sms.text.startswith("פרסומת")
    assert "שלום נועה," in sms.text
    assert "Premium Bank" in sms.text
    assert sms.text.endswith(HE_OPT_OUT)
    assert renderer.render("נועה").template_id == "premium_appreciation.he"


def test_english(renderer: SmsRenderer) -> None:
    sms = renderer.render("John", "en")
    assert (sms.language_used, sms.template_id) == ("en", "premium_appreciation.en")
    assert sms.text.startswith("Advertisement: Premium Bank")
    assert "Hello John, we appreciate your continued loyalty" in sms.text
    assert sms.text.endswith(EN_OPT_OUT)
    assert (sms.encoding, sms.segments) == ("GSM-7", 1)
    assert sms.units == len(sms.text)


@pytest.mark.parametrize("language", ["ar", "ru"])
def test_arabic_and_russian_fall_back_to_hebrew(renderer: SmsRenderer, language: str) -> None:
    sms = renderer.render("Ahmad", language)
    assert (sms.language_used, sms.template_id) == ("he", "premium_appreciation.he")
    assert sms.text.startswith("פרסומת")


def test_arabic_template_is_used_when_it_exists(templates_copy: Path) -> None:
    (templates_copy / "premium_appreciation.ar.j2").write_text(AR_TEMPLATE, encoding="utf-8")
    renderer = SmsRenderer(templates_dir=templates_copy)
    assert renderer.languages == ("ar", "en", "he")
    sms = renderer.render("محمد", "ar")
    assert (sms.language_used, sms.template_id, sms.encoding) == ("ar", "premium_appreciation.ar", "UCS-2")
    assert "مرحبا محمد،" in sms.text
    assert renderer.render("Анна", "ru").language_used == "he"  # still no Russian template


@pytest.mark.parametrize("language", ["fr", "xx", "", "   ", None, "hebrew", "e", "12", "../en"])
def test_unknown_language_falls_back_to_hebrew(renderer: SmsRenderer, language: str | None) -> None:
    assert renderer.render("Dana", language).language_used == "he"


@pytest.mark.parametrize(
    ("language", "expected"),
    [("EN", "en"), (" en ", "en"), ("en-US", "en"), ("en_GB", "en"), ("he-IL", "he"), ("iw", "he")],
)
def test_language_codes_are_normalised(renderer: SmsRenderer, language: str, expected: str) -> None:
    assert normalise_language(language) == expected
    assert renderer.render("Dana", language).language_used == expected


# --- hostile names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["he", "en"])
def test_markup_and_template_syntax_in_a_name_are_literal(renderer: SmsRenderer, language: str) -> None:
    name = "<b>{{7*7}}</b>"
    sms = renderer.render(name, language)
    assert name in sms.text
    assert "49" not in sms.text


@pytest.mark.parametrize(
    "name",
    [
        "{{ bank_name }}",
        "{% if true %}x{% endif %}",
        "{{ ''.__class__.__mro__ }}",
        "{# comment #}",
        "{{ first_name }}",
        "{% raw %}",
        "{% include 'x.j2' %}",
    ],
)
def test_jinja_in_a_name_is_never_evaluated(renderer: SmsRenderer, name: str) -> None:
    sms = renderer.render(name, "en")
    assert f"Hello {name}," in sms.text


def test_ampersand_is_not_html_escaped(renderer: SmsRenderer) -> None:
    assert "Hello Tom & Jerry's <Co>," in renderer.render("Tom & Jerry's <Co>", "en").text


def test_rlo_override_is_removed(renderer: SmsRenderer) -> None:
    sms = renderer.render("\u202eevil\u202c Bob", "en")
    assert "\u202e" not in sms.text and "\u202c" not in sms.text
    assert "Hello evil Bob," in sms.text


def test_emoji_is_kept_and_makes_the_message_ucs2(renderer: SmsRenderer) -> None:
    sms = renderer.render("Dana 😊", "en")
    assert "Hello Dana 😊," in sms.text
    assert sms.encoding == "UCS-2"
    assert sms.units == _utf16_units(sms.text)
    assert sms.units == len(sms.text) + 1  # the emoji is a surrogate pair


def test_long_name_is_truncated(renderer: SmsRenderer) -> None:
    name = "Maximilian" * 20  # 200 characters
    sms = renderer.render(name, "en")
    assert f"Hello {name[:30]}," in sms.text
    assert name[:31] not in sms.text
    assert sms.segments <= 2


@pytest.mark.parametrize("name", ["", "   ", "\t\n", "\u200f\u202e\u200b", "\x00\x07", None])
def test_empty_name_gives_a_neutral_greeting(renderer: SmsRenderer, name: str | None) -> None:
    he = renderer.render(name, "he").text
    en = renderer.render(name, "en").text
    assert "\nשלום,\n" in he
    assert "\nHello, we appreciate your continued loyalty" in en
    assert "  " not in he and "  " not in en


# --- clean_first_name ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  John  ", "John"),
        ("Mary\n\tAnn", "Mary Ann"),
        ("Mary\u00a0\u2028Ann", "Mary Ann"),
        ("Zoe\u0301", "Zoé"),  # NFC
        ("Jo\x00h\x07n\x7f", "John"),
        ("מרים\u200f", "מרים"),  # trailing RIGHT-TO-LEFT MARK
        ("\u2066Dana\u2069", "Dana"),  # isolate
        ("\u202aDa\u202bna\u202d\u202c", "Dana"),  # embeddings and overrides
        ("Da\u200bna\u2060\ufeff", "Dana"),  # zero-width space, word joiner, BOM
        ("Da\u200dna", "Dana"),  # ZWJ between letters
        ("שָׂרָה", "שָׂרָה"),  # niqqud kept
        ("ג'ורג'", "ג'ורג'"),
        ("Dana \u202e Cohen", "Dana Cohen"),
        ("<b>{{7*7}}</b>", "<b>{{7*7}}</b>"),
        (None, ""),
    ],
)
def test_clean_first_name(raw: str | None, clean: str) -> None:
    assert clean_first_name(raw) == clean


def test_zwj_is_kept_inside_an_emoji_sequence() -> None:
    family = "👨\u200d👩\u200d👧"
    assert clean_first_name(f"Dana {family}") == f"Dana {family}"
    technologist = "👩🏽\u200d💻"  # with a skin-tone modifier before the ZWJ
    assert clean_first_name(technologist) == technologist


def test_truncation_stops_at_30_units() -> None:
    assert clean_first_name("a" * 200) == "a" * MAX_FIRST_NAME_UNITS
    assert clean_first_name("ש" * 31) == "ש" * 30


def test_truncation_does_not_split_a_surrogate_pair() -> None:
    assert clean_first_name("a" * 29 + "😀") == "a" * 29


def test_truncation_does_not_split_combining_marks() -> None:
    assert clean_first_name("א" * 28 + "שָׂ") == "א" * 28  # ש + shin dot + qamats would be 31 units


def test_truncation_does_not_split_an_emoji_sequence_or_a_flag() -> None:
    assert clean_first_name("a" * 26 + "👨\u200d👩") == "a" * 26
    assert clean_first_name("a" * 27 + "🇮🇱") == "a" * 27
    assert clean_first_name("a" * 26 + "🇮🇱") == "a" * 26 + "🇮🇱"


def test_truncation_does_not_leave_a_trailing_space() -> None:
    assert clean_first_name("a" * 29 + " bcd") == "a" * 29


def test_a_single_overlong_cluster_leaves_nothing() -> None:
    assert clean_first_name("a" + "\u0301" * 40) == ""


def test_clean_name_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        clean_first_name(42)  # type: ignore[arg-type]


# --- legal text --------------------------------------------------------------------------------------


def test_the_shipped_templates() -> None:
    assert {path.name for path in TEMPLATE_FILES} >= {"premium_appreciation.he.j2", "premium_appreciation.en.j2"}


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("name", ["Noa", ""])
def test_every_template_is_advertising_names_the_sender_and_offers_opt_out(
    renderer: SmsRenderer, path: Path, name: str
) -> None:
    language = path.name.split(".")[1]
    assert language in LEGAL_MARKERS, f"add the legal wording of {language!r} to LEGAL_MARKERS and this test"
    ad_marker, opt_out = LEGAL_MARKERS[language]
    sms = renderer.render(name, language)
    assert sms.language_used == language
    assert sms.text.startswith(ad_marker)
    assert "Premium Bank" in sms.text
    assert opt_out in sms.text


def test_legal_wording() -> None:
    assert LEGAL_MARKERS["he"] == ("פרסומת", HE_OPT_OUT)
    assert LEGAL_MARKERS["en"] == ("Advertisement:", EN_OPT_OUT)


def test_bank_name_is_configurable(templates_copy: Path) -> None:
    renderer = SmsRenderer(templates_dir=templates_copy, bank_name="Bank Leumi")
    assert "Advertisement: Bank Leumi" in renderer.render("John", "en").text
    assert renderer.render("John", "en", bank_name="Other Bank").text.startswith("Advertisement: Other Bank")


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("Hello {{ first_name }}, {{ branch }}\nלהסרה השב/י הסר", "UndefinedError"),
        ("פרסומת: {{ bank_name }} {% if %}", "TemplateSyntaxError"),
        ("פרסומת: {{ bank_name }} {{ ''.__class__.__mro__ }}\nלהסרה השב/י הסר", "SecurityError"),
        ("שלום {{ first_name }}, {{ bank_name }}\nלהסרה השב/י הסר", "advertising marker"),
        ("פרסומת: {{ bank_name }}\nשלום {{ first_name }}", "opt-out"),
        ("פרסומת: שלום {{ first_name }}\nלהסרה השב/י הסר", "sender"),
        ("{% if first_name %}פרסומת: {{ bank_name }}\nלהסרה השב/י הסר{% endif %}", "empty"),
    ],
)
def test_invalid_templates_are_refused_at_load_time(tmp_path: Path, content: str, error: str) -> None:
    (tmp_path / "premium_appreciation.he.j2").write_text(content, encoding="utf-8")
    with pytest.raises(SmsTemplateError, match=error):
        SmsRenderer(templates_dir=tmp_path)


def test_missing_hebrew_template_is_refused(tmp_path: Path) -> None:
    shutil.copy(TEMPLATES_DIR / "premium_appreciation.en.j2", tmp_path)
    with pytest.raises(SmsTemplateError, match="fallback"):
        SmsRenderer(templates_dir=tmp_path)


def test_templates_are_loaded_once(templates_copy: Path) -> None:
    renderer = SmsRenderer(templates_dir=templates_copy)
    (templates_copy / "premium_appreciation.en.j2").write_text("changed {{ nonsense }}", encoding="utf-8")
    assert renderer.render("John", "en").text.startswith("Advertisement:")


@pytest.mark.parametrize("kwargs", [{"template": "../etc"}, {"template": ""}, {"max_segments": 0}, {"bank_name": " "}])
def test_bad_constructor_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SmsRenderer(**kwargs)


# --- segments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ש" * 30, "€" * 30, "😀" * 15, "a" * 30])
@pytest.mark.parametrize("language", ["he", "en"])
def test_templates_stay_within_three_segments_with_a_30_unit_name(
    renderer: SmsRenderer, language: str, name: str
) -> None:
    sms = renderer.render(name, language)
    assert sms.segments <= 3
    assert sms.encoding == "GSM-7" or sms.units <= 201


def test_english_with_an_ascii_name_is_gsm7_within_two_segments(renderer: SmsRenderer) -> None:
    sms = renderer.render("Maximilian-Alexander Bartholomew Christopher", "en")
    assert (sms.encoding, sms.segments) == ("GSM-7", 2)


def test_check_segment_limit(renderer: SmsRenderer) -> None:
    name = "Dana Cohen"
    sms = renderer.render(name, "he")
    assert sms.segments == 2
    assert check_segment_limit(sms, 2) is sms
    with pytest.raises(SegmentLimitExceeded) as info:
        check_segment_limit(sms, 1)
    exc = info.value
    assert (exc.template_id, exc.segments, exc.limit) == ("premium_appreciation.he", 2, 1)
    assert str(exc) == "premium_appreciation.he: 2 SMS segments exceed the limit of 1"
    assert name not in str(exc) and "שלום" not in str(exc)


def test_render_enforces_the_configured_limit(templates_copy: Path) -> None:
    renderer = SmsRenderer(templates_dir=templates_copy, max_segments=1)
    assert renderer.render("John", "en").segments == 1  # GSM-7, 146 septets
    with pytest.raises(SegmentLimitExceeded):
        renderer.render("John", "he")


def test_preflight_passes_for_the_shipped_templates(renderer: SmsRenderer) -> None:
    assert renderer.preflight() == {"premium_appreciation.he": 2, "premium_appreciation.en": 3}


def test_preflight_fails_when_a_template_exceeds_the_limit(templates_copy: Path) -> None:
    with pytest.raises(SegmentLimitExceeded) as info:
        SmsRenderer(templates_dir=templates_copy, max_segments=2).preflight()
    assert info.value.template_id == "premium_appreciation.en"
    assert SmsRenderer(templates_dir=templates_copy, max_segments=2).preflight(["he", "ar"]) == {
        "premium_appreciation.he": 2
    }


def test_preflight_catches_a_long_new_template(templates_copy: Path) -> None:
    long_ar = AR_TEMPLATE.replace("نقدر ولاءك.", "نقدر ولاءك. " * 20)
    (templates_copy / "premium_appreciation.ar.j2").write_text(long_ar, encoding="utf-8")
    renderer = SmsRenderer(templates_dir=templates_copy)  # loads fine: the limit is a preflight matter
    with pytest.raises(SegmentLimitExceeded, match="premium_appreciation.ar"):
        renderer.preflight()


# --- no accidental logging of the text ---------------------------------------------------------------


def test_repr_hides_the_text(renderer: SmsRenderer) -> None:
    sms = renderer.render("Yael", "he")
    for shown in (repr(sms), str(sms), f"{sms}", repr([sms])):
        assert "Yael" not in shown
        assert "פרסומת" not in shown
        assert "premium_appreciation.he" in shown
    assert repr(sms) == "RenderedSms(template_id='premium_appreciation.he', encoding='UCS-2', segments=2)"


def test_rendered_sms_is_frozen(renderer: SmsRenderer) -> None:
    sms = renderer.render("Yael", "he")
    assert isinstance(sms, RenderedSms)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sms.text = "other"  # type: ignore[misc]
