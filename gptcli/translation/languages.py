"""Languages: ISO 639-1 codes, English names, and each model family's own codes.

Users type `--to fr`, `--to French` or `--to fra`; models want `>>fra<<`
(multilingual Marian), `translate English to French:` (T5), `__fr__`
(M2M100), `fra_Latn` (NLLB) or `fr_XX` (mBART-50). One table maps them all.
Kept free of torch so a bad code is a usage error before any model loads.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from gptcli.errors import UsageError


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, e.g. "fr"
    name: str  # English name, e.g. "French" (also what T5 prefixes and plain prompts use)
    iso3: str  # ISO 639-3 (Marian multi-target tokens use it: >>fra<<)
    nllb: str | None = None  # NLLB-200 / FLORES-200 code, e.g. "fra_Latn"
    mbart: str | None = None  # mBART-50 code, e.g. "fr_XX"
    aliases: tuple[str, ...] = ()  # other names people type ("Farsi", "Mandarin")

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


# code, name, ISO 639-3, NLLB-200, mBART-50, aliases
_TABLE = [
    ("af", "Afrikaans", "afr", "afr_Latn", "af_ZA", ()),
    ("am", "Amharic", "amh", "amh_Ethi", None, ()),
    ("ar", "Arabic", "ara", "arb_Arab", "ar_AR", ()),
    ("az", "Azerbaijani", "aze", "azj_Latn", "az_AZ", ()),
    ("be", "Belarusian", "bel", "bel_Cyrl", None, ()),
    ("bg", "Bulgarian", "bul", "bul_Cyrl", None, ()),
    ("bn", "Bengali", "ben", "ben_Beng", "bn_IN", ("Bangla",)),
    ("bs", "Bosnian", "bos", "bos_Latn", None, ()),
    ("ca", "Catalan", "cat", "cat_Latn", None, ()),
    ("cs", "Czech", "ces", "ces_Latn", "cs_CZ", ()),
    ("cy", "Welsh", "cym", "cym_Latn", None, ()),
    ("da", "Danish", "dan", "dan_Latn", None, ()),
    ("de", "German", "deu", "deu_Latn", "de_DE", ("Deutsch",)),
    ("el", "Greek", "ell", "ell_Grek", None, ()),
    ("en", "English", "eng", "eng_Latn", "en_XX", ()),
    ("eo", "Esperanto", "epo", "epo_Latn", None, ()),
    ("es", "Spanish", "spa", "spa_Latn", "es_XX", ("Castilian", "Español")),
    ("et", "Estonian", "est", "est_Latn", "et_EE", ()),
    ("eu", "Basque", "eus", "eus_Latn", None, ()),
    ("fa", "Persian", "fas", "pes_Arab", "fa_IR", ("Farsi",)),
    ("fi", "Finnish", "fin", "fin_Latn", "fi_FI", ()),
    ("fr", "French", "fra", "fra_Latn", "fr_XX", ("Français",)),
    ("ga", "Irish", "gle", "gle_Latn", None, ()),
    ("gl", "Galician", "glg", "glg_Latn", "gl_ES", ()),
    ("gu", "Gujarati", "guj", "guj_Gujr", "gu_IN", ()),
    ("he", "Hebrew", "heb", "heb_Hebr", "he_IL", ()),
    ("hi", "Hindi", "hin", "hin_Deva", "hi_IN", ()),
    ("hr", "Croatian", "hrv", "hrv_Latn", "hr_HR", ()),
    ("hu", "Hungarian", "hun", "hun_Latn", None, ()),
    ("hy", "Armenian", "hye", "hye_Armn", None, ()),
    ("id", "Indonesian", "ind", "ind_Latn", "id_ID", ()),
    ("is", "Icelandic", "isl", "isl_Latn", None, ()),
    ("it", "Italian", "ita", "ita_Latn", "it_IT", ("Italiano",)),
    ("ja", "Japanese", "jpn", "jpn_Jpan", "ja_XX", ()),
    ("ka", "Georgian", "kat", "kat_Geor", "ka_GE", ()),
    ("kk", "Kazakh", "kaz", "kaz_Cyrl", "kk_KZ", ()),
    ("km", "Khmer", "khm", "khm_Khmr", "km_KH", ()),
    ("ko", "Korean", "kor", "kor_Hang", "ko_KR", ()),
    ("la", "Latin", "lat", None, None, ()),
    ("lt", "Lithuanian", "lit", "lit_Latn", "lt_LT", ()),
    ("lv", "Latvian", "lav", "lvs_Latn", "lv_LV", ()),
    ("mk", "Macedonian", "mkd", "mkd_Cyrl", "mk_MK", ()),
    ("ml", "Malayalam", "mal", "mal_Mlym", "ml_IN", ()),
    ("mn", "Mongolian", "mon", "khk_Cyrl", "mn_MN", ()),
    ("mr", "Marathi", "mar", "mar_Deva", "mr_IN", ()),
    ("ms", "Malay", "msa", "zsm_Latn", None, ()),
    ("my", "Burmese", "mya", "mya_Mymr", "my_MM", ()),
    ("ne", "Nepali", "nep", "npi_Deva", "ne_NP", ()),
    ("nl", "Dutch", "nld", "nld_Latn", "nl_XX", ("Flemish",)),
    ("no", "Norwegian", "nor", "nob_Latn", None, ("Bokmål",)),
    ("pa", "Punjabi", "pan", "pan_Guru", None, ()),
    ("pl", "Polish", "pol", "pol_Latn", "pl_PL", ()),
    ("ps", "Pashto", "pus", "pbt_Arab", "ps_AF", ()),
    ("pt", "Portuguese", "por", "por_Latn", "pt_XX", ("Português",)),
    ("ro", "Romanian", "ron", "ron_Latn", "ro_RO", ("Moldavian",)),
    ("ru", "Russian", "rus", "rus_Cyrl", "ru_RU", ()),
    ("si", "Sinhala", "sin", "sin_Sinh", "si_LK", ()),
    ("sk", "Slovak", "slk", "slk_Latn", None, ()),
    ("sl", "Slovenian", "slv", "slv_Latn", "sl_SI", ("Slovene",)),
    ("sq", "Albanian", "sqi", "als_Latn", None, ()),
    ("sr", "Serbian", "srp", "srp_Cyrl", None, ()),
    ("sv", "Swedish", "swe", "swe_Latn", "sv_SE", ()),
    ("sw", "Swahili", "swa", "swh_Latn", "sw_KE", ()),
    ("ta", "Tamil", "tam", "tam_Taml", "ta_IN", ()),
    ("te", "Telugu", "tel", "tel_Telu", "te_IN", ()),
    ("th", "Thai", "tha", "tha_Thai", "th_TH", ()),
    ("tl", "Tagalog", "tgl", "tgl_Latn", "tl_XX", ("Filipino",)),
    ("tr", "Turkish", "tur", "tur_Latn", "tr_TR", ()),
    ("uk", "Ukrainian", "ukr", "ukr_Cyrl", "uk_UA", ()),
    ("ur", "Urdu", "urd", "urd_Arab", "ur_PK", ()),
    ("uz", "Uzbek", "uzb", "uzn_Latn", None, ()),
    ("vi", "Vietnamese", "vie", "vie_Latn", "vi_VN", ()),
    ("xh", "Xhosa", "xho", "xho_Latn", "xh_ZA", ()),
    ("yi", "Yiddish", "yid", "ydd_Hebr", None, ()),
    ("zh", "Chinese", "zho", "zho_Hans", "zh_CN", ("Mandarin",)),
    ("zu", "Zulu", "zul", "zul_Latn", None, ()),
]

LANGUAGES: dict[str, Language] = {row[0]: Language(*row) for row in _TABLE}

# Scripts written without spaces between words: translated pieces of a long line join with "".
NO_SPACE = {"zh", "ja", "th", "km", "my"}


def _index() -> dict[str, Language]:
    index: dict[str, Language] = {}
    for lang in LANGUAGES.values():
        for key in (lang.code, lang.name, lang.iso3, lang.nllb, lang.mbart, *lang.aliases):
            if key:
                index.setdefault(key.lower(), lang)
    return index


_INDEX = _index()


def find(value: str) -> Language | None:
    """The language for a code or name (case-insensitive), or None."""
    key = value.strip().lower().replace("-", "_")
    if key in _INDEX:
        return _INDEX[key]
    # Regional variants: "pt-BR", "en_US", "zh-Hant" -> the base language.
    base = key.split("_")[0]
    return _INDEX.get(base) if base != key else None


def resolve(value: str, flag: str) -> Language:
    """A language from what the user typed, or a usage error that lists close matches."""
    lang = find(value)
    if lang is not None:
        return lang
    keys = list(_INDEX)
    close = difflib.get_close_matches(value.strip().lower(), keys, n=4, cutoff=0.6)
    suggestions = []
    for key in close:
        label = str(_INDEX[key])
        if label not in suggestions:
            suggestions.append(label)
    hint = (
        f"Did you mean {', '.join(suggestions)}?"
        if suggestions
        else "Use an ISO 639-1 code such as fr or de, or a name such as French."
    )
    raise UsageError(
        f"unknown language '{value}' for {flag}.", hint=hint + " `gptcli translate --list-languages` lists them."
    )


def all_languages() -> list[Language]:
    return sorted(LANGUAGES.values(), key=lambda lang: lang.code)
