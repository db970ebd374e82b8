"""The settings of a small pipeline run (tiny random encoders, a few phantom studies, 4 steps)."""

SMALL = dict(preset="tiny-random", source="phantom:templated", image_size=160, max_train_samples=24,
             max_val_samples=4, max_test_samples=6, max_steps=4, batch_size=4, eval_every=2, max_new_tokens=6,
             guided_val_samples=5, n_resamples=100, n_permutations=200, progress=False)
