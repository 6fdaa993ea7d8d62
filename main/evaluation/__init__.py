"""What the evaluation entry points run: shared seeding and sharding (common), FID scoring (fid), plots (plots), and
the tasks of test_ae.py (stage_one) and test_ddpm.py (stage_two). The entry points in main/ only parse and call these."""
