"""On PYTHONPATH only in tests that train on fabricated CIFAR/SVHN files (tests/support/fabricated.py): every
Python process started with it (Ray's workers included) lets torchvision read files whose MD5
cannot match the published archives. Nothing else changes: the datasets' own reading code runs.
The patch applies when torchvision's module is first imported, so processes that never read
datasets pay nothing."""

import importlib.abc
import importlib.util
import os
import sys

MODULES = {"torchvision.datasets.cifar", "torchvision.datasets.svhn"}


def _file_exists(fpath, md5=None):
    return os.path.isfile(fpath)


class _Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in MODULES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.check_integrity = _file_exists

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Patch())
