"""Static texts of the leaderboard (written here, never taken from results files)."""

from __future__ import annotations

TITLE = "# hubstab leaderboard: stability to deformations relative to noise"

INTRODUCTION = """
Models ranked by their **relative stability** R_f = D_f / G_f
([Petrini et al., NeurIPS 2021](https://arxiv.org/abs/2105.02468)): how much the output moves under small
smooth deformations of the image (D_f), relative to how much it moves under noise of the same norm (G_f).
**Lower is more stable.** Good image classifiers learn to be stable to deformations, and across
architectures their test error follows eps_t ~ a sqrt(R_f). The *Error vs stability* tab shows that law on
the results below; *About* gives the definitions.
"""

LATEX: list[dict[str, str | bool]] = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
]
"""Delimiters of the formulas in :data:`ABOUT` (rendered with KaTeX by Gradio)."""

PAPER_URL = "https://arxiv.org/abs/2105.02468"

BIBTEX = """@inproceedings{petrini2021relative,
  title         = {Relative stability toward diffeomorphisms indicates performance in deep nets},
  author        = {Petrini, Leonardo and Favero, Alessandro and Geiger, Mario and Wyart, Matthieu},
  booktitle     = {Advances in Neural Information Processing Systems},
  volume        = {34},
  year          = {2021},
  eprint        = {2105.02468},
  archivePrefix = {arXiv}
}"""

ABOUT = (
    r"""
## What is measured

From [L. Petrini, A. Favero, M. Geiger, M. Wyart, *Relative stability toward diffeomorphisms indicates
performance in deep nets*, NeurIPS 2021 (arXiv:2105.02468)](https://arxiv.org/abs/2105.02468).

For P probe images x, hubstab draws a random smooth deformation $\tau$ (a max-entropy diffeomorphism at
temperature T, cut-off c) and Gaussian noise $\eta$ rescaled to the same norm,
$\|\eta\| = \|\tau x - x\|$, and compares the network's logits f:

$$D_f = \frac{\langle \|f(\tau x) - f(x)\|^2 \rangle_{x,\tau}}{\langle \|f(x) - f(z)\|^2 \rangle_{x,z}}, \qquad G_f = \frac{\langle \|f(x + \eta) - f(x)\|^2 \rangle_{x,\eta}}{\langle \|f(x) - f(z)\|^2 \rangle_{x,z}}, \qquad R_f = \frac{D_f}{G_f}$$

The displacement field is $u(x, y) = \sum_{i, j \ge 1,\ \sqrt{i^2 + j^2} < c + 1/2} C_{ij} \sin(i \pi x) \sin(j \pi y)$
with $C_{ij} \sim \mathcal{N}(0, T / (i^2 + j^2))$ (the same for v); its typical displacement on an
n-pixel image is $\delta = \frac{n}{2}\sqrt{\pi T \log c}$ pixels. **Lower R_f is more stable** to
deformations than to noise of the same size. Across architectures trained on the same task the test error
follows $\varepsilon_t \approx a \sqrt{R_f}$ (the paper found $a \approx 0.2$ on CIFAR-10); the
*Error vs stability* tab fits that law on the board. The interval of R_f is a bootstrap over probe images.

## How rows are ranked

Rows are comparable only within the same dataset and protocol: the board shows one such group at a time and
ranks its trained models 1, 2, 3, ... by R_f. Models at random initialisation (the paper's reference point,
where R_f is of order 1) are never ranked among trained ones; tick *Show models at initialisation* to see
them apart. A model's row is its run with the most probe images (ties: the newest). *Source* says whether a
row comes from the board's own runs or was submitted by a user.

## Columns

- *Test error* is the top-1 error on hubstab's own probe images (often a few hundred): it has a binomial
  uncertainty of about $\sqrt{e (1 - e) / n}$.
- *ImageNet top-1 error (timm)* is the published error of the same timm weights on the 50,000 ImageNet
  validation images (pytorch-image-models, results/results-imagenet.csv, Apache-2.0; see data/SOURCE.md).
  It is shown for pretrained timm models only, and can be used in the plot instead of hubstab's error.
- *Family* is read from the model name (resnet, vit, convnext, efficientnet, ...).

## Cite

```bibtex
"""
    + BIBTEX
    + """
```

Also: U. Tomasini, L. Petrini, F. Cagnetta, M. Wyart. *How deep convolutional neural networks lose spatial
information with training*, 2022 (the per-layer curves in the model details).
"""
)

PROTOCOLS = """
## Protocols

A protocol is the set of settings that makes two R_f comparable: the typical displacement delta (pixels)
and cut-off c of the diffeomorphisms, the interpolation, the estimator (mean, or the paper's median), how
BatchNorm is evaluated, where the noise is added, and the probe set. Runs name it in
`config.protocol.name` (with a version):

- a **named protocol** (for example `in1k-v1`: ImageNet-1k validation images with hubstab's fixed settings,
  version 1; `paper`: the settings of Petrini et al. 2021, 500 test images, c = 3) fixes every setting, so
  all its runs are comparable; a new version is a new group;
- **custom (...)**: any other settings, grouped by their short description
  `delta=<px> cut=<c> <interpolation> <estimator>`.
"""

EMPTY_BOARD = """
### This board has no results yet

- **Locally**: `pip install "hubstab[leaderboard]"`, evaluate a model with `hubstab eval MODEL` (it writes
  `./hubstab-results`), then run `hubstab leaderboard` there (or `hubstab leaderboard --results DIR`).
- **On a hub Space**: set the Space variable `HUBSTAB_RESULTS` to a hub dataset repo (`org/name`) that holds
  results files (`hubstab push hubstab-results --repo org/name`), and the secret `HF_TOKEN` (write access to
  that repo) to accept submissions as pull requests.
- Or upload a results file in the *Submit* tab to see it here for your session.
"""


def submit_text(repo_id: str | None, writable: bool) -> str:
    """The Submit tab's text for a board reading ``repo_id`` (None: a local folder), with or without a token."""
    text = """
## Add results

Run `hubstab eval` on your model and upload the JSON file it writes. The file is checked against the results
schema (types, ranges, required settings, size) and either accepted or rejected with the reason. Nothing in
a file is executed, and its text is shown as plain text.
"""
    if writable:
        text += (
            "\nAn accepted file is shown in your session and opened as a **pull request** to the results repo "
            f"`{repo_id}` under `submissions/`; once the maintainers merge it, it is on the board for everyone "
            "(marked *submitted*). You can also **request an evaluation** of a hub model: the request is "
            f"appended to `requests/` of `{repo_id}`, and the board's maintainers run it.\n"
        )
    else:
        text += (
            "\nThis board has no results repo with a write token, so an accepted file is shown in your "
            "session only, and evaluation requests cannot be recorded. To publish results, push them to the "
            "results repo: `hubstab push FILE --repo ORG/NAME --pr`.\n"
        )
    return text


FIT_HELP = (
    "Each point is one model (its run with the most probe images in the chosen dataset and protocol): filled "
    "circles are trained models, hollow diamonds models at initialisation; the bar is the interval of R_f. "
    "The dashed line is the fit eps = a sqrt(R_f) in log space, the band a +- its standard error."
)
