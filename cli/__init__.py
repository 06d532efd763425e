"""The `studio` command: the operator's door to the pipeline.

One module per command group (`app.py` registers them); it imports the domain
(`studio`), the flows and `engine`, and nothing imports it (the import contract in
tests/test_import_contract.py).
"""
