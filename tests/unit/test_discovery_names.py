import pytest

from modelium.discovery import MAX_NAME_LENGTH, sanitize_model_name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("llama-3.1-8b", "llama-3.1-8b"),
        ("Llama 3.1 8B Instruct", "llama-3.1-8b-instruct"),
        ("my  model!!v2", "my-model-v2"),
        ("--_.model._--", "model"),
        ("a...b___c---d", "a.b_c-d"),
        ("Modèle Été", "modele-ete"),
        ("org/model:latest", "org-model-latest"),
        ("résumé@2024", "resume-2024"),
    ],
)
def test_sanitize(raw: str, expected: str) -> None:
    assert sanitize_model_name(raw) == expected


def test_sanitize_truncates_without_trailing_separator() -> None:
    raw = "a" * 63 + "-bcdef"
    name = sanitize_model_name(raw)
    assert len(name) <= MAX_NAME_LENGTH
    assert name == "a" * 63


@pytest.mark.parametrize("raw", ["", "   ", "...", "-_-", "模型", "!!!"])
def test_sanitize_rejects_empty(raw: str) -> None:
    with pytest.raises(ValueError):
        sanitize_model_name(raw)
