"""ResNet-20 (He et al., 2016, §4.2: 3x3 CIFAR stem, three stages of 3 basic blocks, widths 16/32/64) on
CIFAR-10 within a CPU budget: SGD vs Bort-SGD, AdamW vs Bort-AdamW, and DBort.

    python -m examples.main --config examples/configs/cifar10_resnet20.py:bort_sgd --workdir runs/r20 \\
        --data-dir DIR   # DIR/cifar10.npz, or $BORT_DATA_DIR

Baselines are the standard recipes, not tuned here:

- sgd: He et al. (2016) §4.2: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, pad-4 random crop +
  horizontal flip. Their step schedule over 64k iterations (~180 epochs) becomes a cosine decay over
  `num_epochs` after a 1-epoch warmup.
- adamw: AdamW (Loshchilov & Hutter, 2019) lr 1e-3, decoupled weight decay 0.05, as `cifar10_resnet18.py`.

Bort-SGD fields: l1-full, α = 1, γ = 0.03, selected by `benchmarks/gamma_sweep.py --dataset cifar10 --model
resnet20` on the held-out validation split (γ ∈ {3e-3, 0.01, 0.03, 0.1}, 2 epochs; both of its rules pick 0.03,
`benchmarks/results/gamma_sweep_cifar10_resnet20.md`). AdamW γ = 5 is a prediction (not swept, over the CPU
budget): between the MNIST LeNet-5 sweep's AdamW choice at equal lr·γ (1.5) and the SGD↔AdamW rule of
`default.py` (0.03 · 0.1 / (0.1 · 1e-3) = 30). dbort_sgd adds -λ mean(y²)^β over every convolution's and the
head's output (λ = 1e-3, β = 0.1, the reference values) to the selected Bort-SGD.

10 epochs (the issue's minimum; `benchmarks/results/cifar10_plan.md` has the measured speed and the CPU budget),
float32: bf16 compute was faster for ResNet-20 but slower for the ViT on this CPU (that file's "Precision"
note), and one precision keeps every CIFAR row and the MNIST evidence comparable.
"""

from examples.configs import default
from examples.configs import mnist_lenet

RECIPES = mnist_lenet.make_recipes(sgd=dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-4),
                                   adamw=dict(learning_rate=1e-3, weight_decay=0.05),
                                   bort_sgd=mnist_lenet.bort_fields(0.03, "l1-full", "1"),
                                   bort_adamw=mnist_lenet.bort_fields(5.0, "l1-full", "1"))


def get_config(recipe: str = "bort_sgd"):
  c = default.cifar10_cpu(default.get_config(), "resnet20", checkpoint_every_steps=100)  # 3-5 min of training
  return default.apply_recipe(c, RECIPES, recipe)
