"""The handler files every maas archive carries (see handlers/ort_base.py); imported flat inside a .mar."""
