import pytest

from satune.tracking import TrackingError, check_version_match


def test_mlflow_client_and_server_must_share_major_and_minor():
    check_version_match("http://h", "3.17.2", "3.17.0")
    for server in ("3.16.2", "2.17.2"):
        with pytest.raises(
            TrackingError, match=f"^version mismatch: the MLflow server at http://h runs MLflow {server}"
        ):
            check_version_match("http://h", server, "3.17.2")
