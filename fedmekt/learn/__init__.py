"""The learning code: model, losses, algorithms, the round engine, evaluation, robust aggregation.

No I/O and no transport: `reproduce`, `simulate` and the MQTT deployment all call these same
functions (tests/test_layers.py checks the imports).
"""
