import pytest

from kontext_studio.service.storage.fake import MemoryStorage
from kontext_studio.service.storage.signed_urls import SignatureError, UrlSigner
from kontext_studio.service.storage.storage_local import LocalStorage


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_put_get_delete(kind: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = LocalStorage(tmp_path / "data") if kind == "local" else MemoryStorage()
    store.put("outputs/job1/0.png", b"abc")
    assert store.exists("outputs/job1/0.png") and store.get("outputs/job1/0.png") == b"abc"
    store.put("outputs/job1/0.png", b"new")
    assert store.get("outputs/job1/0.png") == b"new"
    store.delete("outputs/job1/0.png")
    assert not store.exists("outputs/job1/0.png")
    with pytest.raises(FileNotFoundError):
        store.get("outputs/job1/0.png")


def test_local_storage_leaves_no_temp_files_and_refuses_escapes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = LocalStorage(tmp_path / "data")
    store.put("a/b.bin", b"x" * 1000)
    assert [p.name for p in (tmp_path / "data" / "a").iterdir()] == ["b.bin"]
    with pytest.raises(ValueError, match="escapes"):
        store.put("../outside.bin", b"x")
    assert not (tmp_path / "outside.bin").exists()


def test_signed_urls_expire_and_resist_tampering() -> None:
    signer = UrlSigner(b"0123456789abcdef-secret", ttl_seconds=60)
    expires, sig = signer.sign("outputs/j/0.png", now=1000)
    signer.verify("outputs/j/0.png", expires, sig, now=1030)
    with pytest.raises(SignatureError, match="expired"):
        signer.verify("outputs/j/0.png", expires, sig, now=1061)
    with pytest.raises(SignatureError, match="does not match"):
        signer.verify("outputs/other/0.png", expires, sig, now=1030)
    with pytest.raises(SignatureError, match="does not match"):
        signer.verify("outputs/j/0.png", expires + 3600, sig, now=1030)
    with pytest.raises(SignatureError, match="does not match"):
        signer.verify("outputs/j/0.png", expires, "\u0080é", now=1030)
    with pytest.raises(ValueError):
        UrlSigner(b"short")
