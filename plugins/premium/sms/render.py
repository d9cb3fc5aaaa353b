"""Render the premium appreciation SMS from per-language Jinja templates.

Templates are ``<templates_dir>/<template>.<lang>.j2`` (default directory
``include_dir()/templates/sms``). Every such file is loaded and validated once, when the renderer is
built: it must render with a sample name and with an empty name, contain the bank name, and - for the
languages with a known legal wording (:data:`LEGAL_MARKERS`) - start with the advertising marker and
contain the opt-out instruction. Rendering then uses the language of the customer when a template
exists for it, else Hebrew (so ``ar`` and ``ru`` use Hebrew until their templates are added).

The first name is data, never template code: it is passed to the template as the variable
``first_name`` after :func:`clean_first_name`, the environment is sandboxed, undefined variables are
errors and autoescaping is off (an SMS is plain text, ``<`` and ``&`` must stay as they are).

Nothing here logs, or puts into an exception message, a name or a rendered text. :class:`RenderedSms`
hides its text from ``repr``/``str``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from premium.paths import include_dir
from premium.sms.encoding import analyse

DEFAULT_TEMPLATE = "premium_appreciation"
DEFAULT_LANGUAGE = "he"
DEFAULT_BANK_NAME = "Premium Bank"
DEFAULT_MAX_SEGMENTS = 3
PREFLIGHT_LANGUAGES: tuple[str, ...] = ("he", "en", "ar", "ru")

# A first name is cut to this many UTF-16 code units: 30 characters for any name in the BMP (Hebrew,
# Arabic, Cyrillic, Latin), fewer for emoji. This bounds what a name adds to a UCS-2 message.
MAX_FIRST_NAME_UNITS = 30

# Worst cases for preflight, each exactly MAX_FIRST_NAME_UNITS long: UCS-2 letters, GSM-7 extension
# characters (2 septets each), and emoji (surrogate pairs, which are never split across segments).
WORST_CASE_NAMES: tuple[str, ...] = ("ש" * 30, "€" * 30, "😀" * 15)
SAMPLE_NAME = "Noa"

# Legal wording (Communications Law section 30A): the advertising marker the text must start with
# and the opt-out instruction it must contain. Checked when templates are loaded.
LEGAL_MARKERS: Mapping[str, tuple[str, str]] = {
    "he": ("פרסומת", "להסרה השב/י הסר"),
    "en": ("Advertisement:", "To opt out reply STOP"),
}

_LANGUAGE_ALIASES = {"iw": "he"}  # the pre-1989 ISO 639 code, still sent by old Java/Android stacks
_LANGUAGE_RE = re.compile(r"[a-z]{2,3}")
_TEMPLATE_NAME_RE = re.compile(r"[A-Za-z0-9_]+")

_ZWJ = "\u200d"
_EMOJI_MODIFIERS = frozenset(["\ufe0f", "\ufe0e", *map(chr, range(0x1F3FB, 0x1F400))])
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co"})


class SmsTemplateError(Exception):
    """A template is missing, invalid or lacks the required legal wording (raised at load time)."""


class SegmentLimitExceeded(Exception):
    """A rendered message needs more segments than allowed; the message names no text."""

    def __init__(self, template_id: str, segments: int, limit: int) -> None:
        super().__init__(f"{template_id}: {segments} SMS segments exceed the limit of {limit}")
        self.template_id = template_id
        self.segments = segments
        self.limit = limit


@dataclass(frozen=True)
class RenderedSms:
    """One rendered message. ``text`` contains the customer's name: ``repr``/``str`` never show it."""

    text: str = field(repr=False)
    language_used: str
    template_id: str
    encoding: str
    segments: int
    units: int

    def __repr__(self) -> str:
        return f"RenderedSms(template_id={self.template_id!r}, encoding={self.encoding!r}, segments={self.segments})"

    __str__ = __repr__


def check_segment_limit(rendered: RenderedSms, max_segments: int) -> RenderedSms:
    """``rendered`` itself, or SegmentLimitExceeded when it needs more than ``max_segments`` segments."""
    if rendered.segments > max_segments:
        raise SegmentLimitExceeded(rendered.template_id, rendered.segments, max_segments)
    return rendered


# ---------------------------------------------------------------------------------------------------
# First name sanitising


def _is_emoji(ch: str) -> bool:
    # "So" covers the emoji of Python's Unicode database; astral symbols newer than it are "Cn".
    return unicodedata.category(ch) == "So" or ord(ch) >= 0x1F000


def _zwj_joins_emoji(text: str, index: int) -> bool:
    before = index - 1
    while before >= 0 and text[before] in _EMOJI_MODIFIERS:
        before -= 1
    after = index + 1
    return before >= 0 and after < len(text) and _is_emoji(text[before]) and _is_emoji(text[after])


def _is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _continues_cluster(text: str, index: int) -> bool:
    """Whether ``text[index]`` belongs to the same user-perceived character as ``text[index - 1]``."""
    ch, previous = text[index], text[index - 1]
    if unicodedata.category(ch) in ("Mn", "Mc", "Me") or ch in _EMOJI_MODIFIERS or ch == _ZWJ or previous == _ZWJ:
        return True
    if _is_regional_indicator(ch) and _is_regional_indicator(previous):
        run = 0
        while index - 1 - run >= 0 and _is_regional_indicator(text[index - 1 - run]):
            run += 1
        return run % 2 == 1  # an odd number of indicators before: this one completes a flag
    return False


def _truncate_units(text: str, max_units: int) -> str:
    units = 0
    for index, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > max_units:
            cut = index
            break
    else:
        return text
    while cut > 0 and _continues_cluster(text, cut):
        cut -= 1
    return text[:cut]


def clean_first_name(name: str | None) -> str:
    """The first name as it may appear in an SMS; "" when nothing usable is left.

    NFC; whitespace of any kind collapsed to single spaces and stripped; control characters,
    private-use characters, lone surrogates and format characters removed - bidi marks, embeddings,
    overrides and isolates (U+200E/F, U+061C, U+202A-U+202E, U+2066-U+2069), zero-width space and
    non-joiner, word joiner, BOM, soft hyphen, emoji tag characters - except a ZERO WIDTH JOINER
    between two emoji (family, profession sequences), which is kept. Then cut to
    :data:`MAX_FIRST_NAME_UNITS` UTF-16 code units without splitting a character from its combining
    marks, an emoji sequence or a flag; no ellipsis is added.
    """
    if name is None:
        return ""
    if not isinstance(name, str):
        raise TypeError(f"first name must be str, not {type(name).__name__}")
    text = " ".join(unicodedata.normalize("NFC", name).split())
    text = "".join(ch for ch in text if ch == _ZWJ or unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    text = "".join(ch for i, ch in enumerate(text) if ch != _ZWJ or _zwj_joins_emoji(text, i))
    text = " ".join(text.split())
    text = _truncate_units(text, MAX_FIRST_NAME_UNITS).strip()
    return unicodedata.normalize("NFC", text)


# ---------------------------------------------------------------------------------------------------
# Renderer


def normalise_language(language: str | None) -> str:
    """``"he-IL"`` -> ``"he"``, ``" EN "`` -> ``"en"``, ``"iw"`` -> ``"he"``; "" for nothing usable."""
    if not isinstance(language, str):
        return ""
    primary = re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]
    primary = _LANGUAGE_ALIASES.get(primary, primary)
    return primary if _LANGUAGE_RE.fullmatch(primary) else ""


class SmsRenderer:
    """Renders ``<template>.<lang>.j2``; templates are loaded and validated once, in the constructor.

    ``bank_name`` is the sender named in every message (template variable ``bank_name``).
    ``max_segments`` is enforced by :meth:`render` and :meth:`preflight`.
    """

    def __init__(
        self,
        template: str = DEFAULT_TEMPLATE,
        templates_dir: str | Path | None = None,
        max_segments: int = DEFAULT_MAX_SEGMENTS,
        bank_name: str = DEFAULT_BANK_NAME,
    ) -> None:
        if not _TEMPLATE_NAME_RE.fullmatch(template or ""):
            raise ValueError("template must be a plain name of letters, digits and underscores")
        if isinstance(max_segments, bool) or not isinstance(max_segments, int) or max_segments < 1:
            raise ValueError("max_segments must be a positive integer")
        if not bank_name or not bank_name.strip():
            raise ValueError("bank_name must not be empty")
        self.template = template
        self.templates_dir = Path(templates_dir) if templates_dir is not None else include_dir() / "templates" / "sms"
        self.max_segments = max_segments
        self.bank_name = bank_name
        self._env = SandboxedEnvironment(
            loader=FileSystemLoader(str(self.templates_dir), encoding="utf-8"),
            undefined=StrictUndefined,
            autoescape=False,  # plain text, not HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self._templates: dict[str, jinja2.Template] = {}
        for path in sorted(self.templates_dir.glob(f"{template}.*.j2")):
            language = path.name[len(template) + 1 : -len(".j2")]
            if _LANGUAGE_RE.fullmatch(language):
                self._templates[language] = self._load(language)
        if DEFAULT_LANGUAGE not in self._templates:
            raise SmsTemplateError(
                f"{template}.{DEFAULT_LANGUAGE}.j2 (the fallback) is missing in {self.templates_dir}"
            )

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages that have their own template."""
        return tuple(sorted(self._templates))

    def _template_id(self, language: str) -> str:
        return f"{self.template}.{language}"

    def _load(self, language: str) -> jinja2.Template:
        template_id = self._template_id(language)
        try:
            compiled = self._env.get_template(f"{template_id}.j2")
            texts = [compiled.render(self._context(SAMPLE_NAME, {})), compiled.render(self._context("", {}))]
        except jinja2.TemplateError as exc:
            raise SmsTemplateError(f"{template_id}: {type(exc).__name__}: {exc}") from None
        for text in (t.strip() for t in texts):
            if not text:
                raise SmsTemplateError(f"{template_id}: renders an empty text")
            if self.bank_name not in text:
                raise SmsTemplateError(f"{template_id}: does not name the sender ({{{{ bank_name }}}})")
            if language in LEGAL_MARKERS:
                ad_marker, opt_out = LEGAL_MARKERS[language]
                if not text.startswith(ad_marker):
                    raise SmsTemplateError(f"{template_id}: must start with the advertising marker {ad_marker!r}")
                if opt_out not in text:
                    raise SmsTemplateError(f"{template_id}: lacks the opt-out instruction {opt_out!r}")
        return compiled

    def _context(self, first_name: str, context: Mapping[str, Any]) -> dict[str, Any]:
        return {"bank_name": self.bank_name, **context, "first_name": first_name}

    def resolve_language(self, language: str | None) -> str:
        """The language whose template is used: ``language`` when it has one, else Hebrew."""
        language = normalise_language(language)
        return language if language in self._templates else DEFAULT_LANGUAGE

    def render(self, first_name: str | None, language: str | None = DEFAULT_LANGUAGE, **context: Any) -> RenderedSms:
        """The message for one customer; SegmentLimitExceeded when it needs more than ``max_segments``.

        ``context`` adds or overrides template variables (e.g. ``bank_name``); ``first_name`` always
        comes from the cleaned ``first_name`` argument.
        """
        rendered = self._render(clean_first_name(first_name), self.resolve_language(language), context)
        return check_segment_limit(rendered, self.max_segments)

    def _render(self, clean_name: str, language: str, context: Mapping[str, Any]) -> RenderedSms:
        template_id = self._template_id(language)
        try:
            text = self._templates[language].render(self._context(clean_name, context)).strip()
        except jinja2.TemplateError as exc:
            # No message: it could quote a context value.
            raise SmsTemplateError(f"{template_id}: rendering failed ({type(exc).__name__})") from None
        encoding = analyse(text)
        return RenderedSms(
            text=text,
            language_used=language,
            template_id=template_id,
            encoding=encoding.encoding,
            segments=encoding.segments,
            units=encoding.units,
        )

    def preflight(self, languages: Iterable[str] = PREFLIGHT_LANGUAGES) -> dict[str, int]:
        """Worst-case segments per template used for ``languages``; SegmentLimitExceeded if any is over.

        Each template is rendered with every name of :data:`WORST_CASE_NAMES` (the longest a cleaned
        name can be). Call it before anything is sent.
        """
        worst: dict[str, int] = {}
        for language in languages:
            resolved = self.resolve_language(language)
            for name in WORST_CASE_NAMES:
                rendered = self._render(clean_first_name(name), resolved, {})
                check_segment_limit(rendered, self.max_segments)
                worst[rendered.template_id] = max(worst.get(rendered.template_id, 0), rendered.segments)
        return worst
