import pytest
from bulkresize_folder import FolderStorage

from bulkresize.testing import StorageContract


class TestFolderStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return FolderStorage(tmp_path / "objects")
