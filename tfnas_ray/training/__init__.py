"""Short training runs for ground truth: pure torch loops, no Ray.

`lm` trains NAS-Bench-NLP language models the way NAS-Bench-NLP did (AWD-LSTM style);
`mlm` pretrains NAS-Bench-BERT encoders with masked-language modelling. Ray Tune drives
them from `tfnas_ray.distributed.tune`.
"""

from tfnas_ray.training.lm import Budget, LMTrainer, TrainConfig

__all__ = ["Budget", "LMTrainer", "TrainConfig"]
