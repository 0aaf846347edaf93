"""The registry's rules beyond the signature (cloud/registry_rules.py), fed as an attacker or a careless
build would: validly signed bundles uploaded over real HTTP to a real cloud. Each refusal is a 4xx with
one line, stores nothing, and the server keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cloud.api_kit import GZIP, Cloud, signed_variant

pytestmark = pytest.mark.usefixtures("clean_environment")



@pytest.fixture
def variant(digits_bundle, tmp_path: Path):
    """variant(**manifest_changes): a signed .tar.gz of the digits bundle with those manifest fields."""
    made = iter(range(1000))

    def make(**changes: object) -> bytes:
        return signed_variant(digits_bundle.root, tmp_path / f"variant-{next(made)}", digits_bundle.private_key,
                              **changes).read_bytes()

    return make


def upload(cloud: Cloud, archive: bytes):
    return cloud.client.post("/api/v1/bundles", content=archive, headers=GZIP)


def stored_versions(cloud: Cloud) -> list[int]:
    return [b["version"] for b in cloud.client.get("/api/v1/bundles", params={"name": "digits-cnn"}).json()]


@pytest.mark.parametrize("version", [2**63, 2**64 + 1, -(2**63) - 1])
def test_a_version_outside_int64_is_refused(cloud: Cloud, variant, version: int):
    """2**63 once reached SQLite and came back as a 500 (OverflowError)."""
    response = upload(cloud, variant(version=version))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("manifest.json holds ") and ("64-bit range" in detail or "fit in 64 bits" in detail)
    assert cloud.stored_files() == [] and stored_versions(cloud) == []
    cloud.assert_serving()


def test_a_version_over_what_the_database_columns_hold_is_refused(cloud: Cloud, variant):
    """A valid int64, but the registry's and deployments' columns are SQL INTEGERs (int4 on PostgreSQL)."""
    response = upload(cloud, variant(version=2**31))
    assert response.status_code == 400
    assert response.json()["detail"] == ("bundle digits-cnn v2147483648: this registry stores versions up to "
                                         "2147483647 (2**31-1, an SQL INTEGER column)")
    assert cloud.stored_files() == [] and stored_versions(cloud) == []
    assert upload(cloud, variant(version=2**31 - 1)).status_code == 201  # the largest is fine
    assert stored_versions(cloud) == [2**31 - 1]


@pytest.mark.parametrize("version", [2**63, 2**31, 0, -1])
def test_a_version_in_a_url_that_no_bundle_can_have_is_a_422(cloud: Cloud, version: int):
    """2**63 in the URL reached SQLite and came back a 500 (OverflowError)."""
    for path in (f"/api/v1/bundles/digits-cnn/{version}", f"/api/v1/bundles/digits-cnn/{version}/download"):
        response = cloud.client.get(path)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["detail"] in ("path.version: Input should be less than or equal to 2147483647",
                                             "path.version: Input should be greater than or equal to 1")
    cloud.assert_serving()


SPEC = {"name": "y", "dtype": "float32", "shape": ["batch", 10]}
INTERFACES = {  # the interface, and the manifest field the refusal must name
    "null": (None, "interface"),
    "a list": ([], "interface"),
    "no outputs": ({"inputs": [SPEC]}, "interface.outputs"),
    "empty inputs": ({"inputs": [], "outputs": [SPEC]}, "interface.inputs"),
    "a spec that is null": ({"inputs": [None], "outputs": [SPEC]}, "interface.inputs[0]"),
    "an unknown dtype": ({"inputs": [{**SPEC, "dtype": "float99"}], "outputs": [SPEC]}, "interface.inputs[0].dtype"),
    "a shape that is a string": ({"inputs": [{**SPEC, "shape": "1x64"}], "outputs": [SPEC]},
                                 "interface.inputs[0].shape"),
}


@pytest.mark.parametrize("case", sorted(INTERFACES))
def test_a_signed_manifest_without_a_usable_interface_is_refused(cloud: Cloud, variant, case: str):
    """`interface: null` used to be stored: no device could ever serve that bundle."""
    interface, field = INTERFACES[case]
    response = upload(cloud, variant(interface=interface))
    assert response.status_code == 422, response.text
    assert f"manifest field {field} must be" in response.json()["detail"]
    assert cloud.stored_files() == [] and stored_versions(cloud) == []
    assert upload(cloud, variant()).status_code == 201


def test_versions_only_go_up_unless_the_signed_manifest_is_a_rollback_build(cloud: Cloud, variant):
    """v2 after v3 used to be accepted. Now it is a 409 naming v3, unless the signed manifest says
    "rollback_build": true (which may not reuse a stored number either)."""
    assert upload(cloud, variant(version=3)).status_code == 201

    older = upload(cloud, variant(version=2))
    assert older.status_code == 409
    assert older.json()["detail"].startswith("bundle digits-cnn v2 is not newer than v3, the newest in the registry")
    same = upload(cloud, variant(version=3, label="a rebuild"))
    assert same.status_code == 409 and "digits-cnn v3 is in the registry already" in same.json()["detail"]
    not_a_boolean = upload(cloud, variant(version=2, rollback_build="yes"))
    assert not_a_boolean.status_code == 422
    assert "manifest field rollback_build must be true or false" in not_a_boolean.json()["detail"]
    not_a_rollback = upload(cloud, variant(version=1, rollback_build=False))
    assert not_a_rollback.status_code == 409 and "newest in the registry" in not_a_rollback.json()["detail"]
    assert stored_versions(cloud) == [3]

    rollback = upload(cloud, variant(version=2, rollback_build=True))
    assert rollback.status_code == 201, rollback.text
    again = upload(cloud, variant(version=2, rollback_build=True))
    assert again.status_code == 409 and "digits-cnn v2 is in the registry already" in again.json()["detail"]
    assert upload(cloud, variant(version=4)).status_code == 201
    assert stored_versions(cloud) == [2, 3, 4]
    assert upload(cloud, variant(version=3, name="other-model")).status_code == 201  # per name


@pytest.mark.parametrize("profile", [b"[" * 50_000 + b"]" * 50_000, b"[1, 2]", b'{"bins": NaN}'])
def test_a_signed_reference_profile_the_drift_monitor_could_not_read_is_refused(cloud: Cloud, variant,
                                                                                profile: bytes):
    """Signed, hashed and listed, but nested 50,000 deep it was a RecursionError where it was read."""
    response = upload(cloud, variant(contents={"profile.json": profile}))
    assert response.status_code == 400, response.text
    assert "profile.json" in response.json()["detail"]
    assert cloud.stored_files() == [] and stored_versions(cloud) == []
    cloud.assert_serving()
