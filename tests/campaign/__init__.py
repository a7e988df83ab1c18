"""A randomized fault campaign: a stack of three workers fed from several sides while a
seeded schedule of faults strikes it, judged against a clean run of the same input
(``scripts/fault_campaign.py``)."""
