"""Static texts of the leaderboard (written here, never taken from results files)."""

TITLE = "# hubstab leaderboard: stability to deformations relative to noise"

INTRODUCTION = """
Models ranked by their **relative stability** R_f = D_f / G_f (Petrini et al., NeurIPS 2021): how much the
output moves under small smooth deformations of the image (D_f), relative to how much it moves under noise of
the same norm (G_f). **Lower is more stable.** Good image classifiers learn to be stable to deformations, and
across architectures their test error follows eps_t ~ a sqrt(R_f). The *Error vs stability* tab shows that
law on the results below.
"""

ABOUT = """
## What is measured

For P probe images x, hubstab draws a random smooth deformation tau (a max-entropy diffeomorphism at
temperature T, cut-off c) and Gaussian noise eta rescaled to the same norm as tau x - x, and compares the
network's logits f:

- D_f = < ||f(tau x) - f(x)||^2 > / < ||f(x) - f(z)||^2 >, stability to deformations;
- G_f = < ||f(x + eta) - f(x)||^2 > / < ||f(x) - f(z)||^2 >, stability to noise;
- R_f = D_f / G_f, relative stability; the interval is a bootstrap over probe images.

The protocol column names the typical displacement delta (pixels), the cut-off c, the interpolation and the
estimator (mean, or the paper's median). Rows are comparable only within the same dataset and protocol; the
rank counts within that group. Of several runs of the same model, dataset and protocol the newest is shown.

## Columns

- *Test error* is the top-1 error on hubstab's own probe images (often a few hundred): it has a binomial
  uncertainty of about sqrt(e (1 - e) / n).
- *ImageNet top-1 error (timm)* is the published error of the same timm weights on the 50,000 ImageNet
  validation images (pytorch-image-models, results/results-imagenet.csv, Apache-2.0; see data/SOURCE.md).
  It is shown for pretrained timm models only, and can be used in the plot instead of hubstab's error.
- *Family* is read from the model name (resnet, vit, convnext, efficientnet, ...).

## References

- L. Petrini, A. Favero, M. Geiger, M. Wyart. Relative stability toward diffeomorphisms indicates
  performance in deep nets. NeurIPS 2021.
- U. Tomasini, L. Petrini, F. Cagnetta, M. Wyart. How deep convolutional neural networks lose spatial
  information with training. 2022 (per-layer curves in the model details).
"""

SUBMIT = """
## Add results

Run `hubstab eval` on your model and upload the JSON file it writes, or give a hub dataset repo
(org/name) that holds such files. The file is checked against the results schema (types, ranges, required
settings, size) and either added to the table for this session or rejected with the reason. Nothing in a
file is executed, and its text is shown as plain text. To publish results permanently, add the files to the
results dataset repo this leaderboard reads.
"""

FIT_HELP = (
    "Each point is one model (the latest run in the chosen dataset and protocol); the bar is the interval "
    "of R_f. The dashed line is the fit eps = a sqrt(R_f) in log space, the band a +- its standard error."
)
