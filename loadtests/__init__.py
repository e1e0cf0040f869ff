"""Locust load tests (locustfile.py), request generators (payloads.py) and SLO files (slo/): installed as maas.loadtests."""
