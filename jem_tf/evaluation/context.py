"""What the evaluations share: the evaluated run (`EvaluatedRun`) and one `EvalContext` per suite
run holding the test arrays, the options, the output folder and figure names, the results and
figures written so far, and the intermediate results several evaluations reuse (logits, OOD
images and scores, compiled predictors, samples)."""

import dataclasses
import os

import keras
import numpy as np
from absl import logging

from jem_tf.evaluation import accuracy, common, ood


@dataclasses.dataclass
class EvaluatedRun:
    """A trained model and what the evaluations need to know about its run."""

    model: keras.Model
    name: str
    image_shape: tuple
    num_classes: int
    class_names: tuple = ()
    dataset: str = ""
    sgld_step_size: float = 1.0
    sgld_noise: float = 0.01
    seed: int = 0
    global_step: int = 0
    workdir: str | None = None
    checkpoint: str | None = None
    data_noise: float = 0.0  # training input noise: the default evaluation input noise
    validation_split: str = ""  # how the run held out its validation images, for the report
    training_labels: str = ""  # which training labels the run learned from (--labels_per_class), for the report

    def input_noise(self, options) -> float:
        """The evaluation's input noise: --eval_input_noise, else the run's training data noise."""
        return float(self.data_noise if options.eval_input_noise is None else options.eval_input_noise)

    @property
    def has_replay_buffer(self) -> bool:
        """Whether the run has persistent chains: restored runs have them when their checkpoint holds a
        replay buffer (`jem_tf.workdir.restore.restore_run`)."""
        return getattr(self.model, "replay_buffer", None) is not None

    def class_name(self, label: int) -> str:
        return str(self.class_names[label]) if label < len(self.class_names) else str(label)


class EvalContext:
    """The state one suite run shares between its evaluations.

    `images` are the first `options.num_examples` test images with the evaluation's input noise;
    `results` and `figures` collect what every evaluation adds (results.json keys; figure name ->
    PNG path). Intermediate results are computed once, on first use, whichever evaluation asks.
    """

    def __init__(self, run: EvaluatedRun, test_images, test_labels, options, output_dir: str,
                 compare: EvaluatedRun | None = None, data_dir=None):
        self.run = run
        self.compare = compare
        self.input_noise = run.input_noise(options)
        self.images = common.add_input_noise(
            np.asarray(test_images, np.float32)[: options.num_examples], self.input_noise, options.seed, "test")
        self.labels = np.asarray(test_labels).astype(np.int64)[: options.num_examples]
        self.options = options
        self.output_dir = output_dir
        self.data_dir = data_dir
        self.results = {}
        self.figures = {}
        # Image sets of the samples evaluation (name -> images), for sample_quality; None until it ran.
        self.sample_sets = None
        self._plain_logits = {}
        self._in_scores = {}
        self._ood_images = {}
        self._ood_scores = {}
        # One compiled function per (kind, run): tracing WRN gradients is costly, so never twice.
        self._compiled = {}

    def runs(self):
        """(result-key prefix, run) for this run and the comparison run."""
        return [("", self.run)] + ([("compare/", self.compare)] if self.compare is not None else [])

    def figure_path(self, name: str) -> str:
        """Where the figure file `name` (e.g. 'logp_hist.png') goes."""
        return os.path.join(self.output_dir, name)

    def class_rows(self) -> list:
        """The classes shown as rows of class-conditional grids (--max_grid_classes)."""
        return list(range(min(self.run.num_classes, self.options.max_grid_classes)))

    def predictor(self, prefix, run):
        key = ("predictor", prefix)
        if key not in self._compiled:
            self._compiled[key] = accuracy.make_refined_predictor(run.model, run.image_shape, run.sgld_step_size,
                                                                  run.sgld_noise)
        return self._compiled[key]

    def score_function(self, prefix, run):
        key = ("scores", prefix)
        if key not in self._compiled:
            self._compiled[key] = ood.make_score_function(run.model, run.image_shape)
        return self._compiled[key]

    def plain_logits(self, prefix, run):
        """Logits of the (noisy) test images without refinement."""
        if prefix not in self._plain_logits:
            self._plain_logits[prefix], _ = accuracy.predict_logits(
                run.model, self.images, self.options.batch_size, progress=self.options.progress,
                predictor=self.predictor(prefix, run), description=f"Logits of {run.name}")
        return self._plain_logits[prefix]

    def keep_plain_logits(self, prefix, logits) -> None:
        """Caches test logits an evaluation computed anyway (accuracy), for the others."""
        self._plain_logits[prefix] = logits

    def logits(self, images, description="Classifying samples"):
        """This run's logits of any images, batched, without refinement."""
        logits, _ = accuracy.predict_logits(self.run.model, images, self.options.batch_size,
                                            progress=self.options.progress, predictor=self.predictor("", self.run),
                                            description=description)
        return logits

    def in_scores(self, prefix, run):
        """OOD scores (ood.SCORE_NAMES) of the in-distribution test images."""
        if prefix not in self._in_scores:
            self._in_scores[prefix] = ood.compute_scores(
                run.model, self.images, self.options.batch_size, f"OOD scores of {run.dataset} test ({run.name})",
                self.options.progress, score_fn=self.score_function(prefix, run))
        return self._in_scores[prefix]

    def ood_images(self, name):
        """Images of one OOD set, or the reason it is unavailable (a string)."""
        if name not in self._ood_images:
            if name == self.run.dataset:
                self._ood_images[name] = "it is the in-distribution dataset"
            else:
                try:
                    # interp mixes the (already noisy) test images; like every set, it then gets its own noise.
                    self._ood_images[name] = common.add_input_noise(ood.load_ood_images(
                        name, self.run.image_shape, self.options.num_examples, reference_images=self.images,
                        data_dir=self.data_dir, seed=self.options.seed, batch_size=self.options.batch_size),
                        self.input_noise, self.options.seed, f"ood/{name}")
                except common.Unavailable as reason:
                    self._ood_images[name] = str(reason)
                if isinstance(self._ood_images[name], str):
                    logging.warning("OOD set %s unavailable: %s", name, self._ood_images[name])
        return self._ood_images[name]

    def ood_scores(self, prefix, run, name):
        key = (prefix, name)
        if key not in self._ood_scores:
            self._ood_scores[key] = ood.compute_scores(
                run.model, self.ood_images(name), self.options.batch_size, f"OOD scores of {name} ({run.name})",
                self.options.progress, score_fn=self.score_function(prefix, run))
        return self._ood_scores[key]
