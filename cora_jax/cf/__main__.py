"""`python -m cora_jax.cf train|grid ...`"""
from cora_jax.cf.cli import main_cf

main_cf()
