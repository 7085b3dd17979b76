"""Turn a dropped folder's name into a model name.

Model names end up in URLs (``/v1/models/<name>``) and as folder names in the repository,
so they are restricted to a small, boring alphabet that needs no escaping anywhere.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_LENGTH = 64

_SEPARATORS = ".-_"
_DISALLOWED = re.compile(r"[^a-z0-9._-]")
_REPEATED_SEPARATOR = re.compile(r"([._-])\1+")


def sanitize_model_name(raw: str) -> str:
    """Return a URL- and filesystem-safe model name derived from ``raw``.

    Lowercases, folds accented letters to their base letter (so "Modèle" becomes "modele"
    rather than "mod-le"), replaces anything outside ``[a-z0-9._-]`` with ``-``, collapses
    repeated separators, strips separators from both ends and caps the length at 64.

    Raises ValueError when nothing usable is left (e.g. a name made only of symbols).
    """
    decomposed = unicodedata.normalize("NFKD", raw)
    folded = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    name = _DISALLOWED.sub("-", folded)
    name = _REPEATED_SEPARATOR.sub(r"\1", name)
    name = name.strip(_SEPARATORS)
    # Truncating can expose a separator at the end again, so strip after cutting.
    name = name[:MAX_NAME_LENGTH].strip(_SEPARATORS)
    if not name:
        raise ValueError(f"cannot derive a model name from {raw!r}")
    return name
