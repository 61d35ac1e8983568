"""GAN objectives of the source papers, SPEC.md section 8. Naming: `<objective>_d_loss` for the
discriminator (or critic) and `<objective>_g_loss` for the generator, where the two differ. Logits
are D's raw outputs on real (`real_logits`) and generated (`fake_logits`) samples, any shape; all
reductions are batch means. Pure PyTorch: these are cheap, elementwise or O(N + M).
Mixed precision as every fastgan loss: half logits (autocast) are computed in float32 and the loss is
float32 (float64 stays float64).
"""
import torch
import torch.nn.functional as F

from .. import _checks as C
from ..reference.contrastive import compute_dtype

__all__ = [
    "vanilla_d_loss", "vanilla_g_loss", "minimax_g_loss", "logistic_d_loss", "logistic_g_loss",
    "least_squares_d_loss", "least_squares_g_loss",
    "hinge_d_loss", "hinge_g_loss",
    "wasserstein_d_loss", "wasserstein_g_loss",
    "loss_sensitive_d_loss", "loss_sensitive_g_loss",
    "dual_contrastive_d_loss", "dual_contrastive_g_loss",
    "multi_hinge_loss", "acgan_d_loss", "acgan_g_loss",
    "cycle_consistency_loss", "identity_loss",
    "word_region_scores", "word_region_loss",
]


def _logits(x, name):
    C.check_tensor(x, name)
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): the loss needs at least one sample")
    return x.to(compute_dtype(x.dtype))


def vanilla_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(softplus(-l_r)) + mean(softplus(l_f)): binary cross-entropy on logits."""
    return F.softplus(-_logits(real_logits, "real_logits")).mean() + F.softplus(_logits(fake_logits, "fake_logits")).mean()


def vanilla_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss mean(softplus(-l_f))."""
    return F.softplus(-_logits(fake_logits, "fake_logits")).mean()


def minimax_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The original (saturating) minimax generator loss mean(log(1 - sigmoid(l_f))) = -mean(softplus(l_f)),
    for completeness (Goodfellow 2014); vanilla_g_loss is the non-saturating form used in practice."""
    return -F.softplus(_logits(fake_logits, "fake_logits")).mean()


# The logistic (non-saturating) GAN loss is the vanilla loss on logits.
logistic_d_loss = vanilla_d_loss
logistic_g_loss = vanilla_g_loss


def least_squares_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """LSGAN: mean(0.5 (l_r - 1)^2) + mean(0.5 l_f^2)."""
    return 0.5 * (_logits(real_logits, "real_logits") - 1).square().mean() + 0.5 * _logits(fake_logits, "fake_logits").square().mean()


def least_squares_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """LSGAN: mean(0.5 (l_f - 1)^2)."""
    return 0.5 * (_logits(fake_logits, "fake_logits") - 1).square().mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - l_r)) + mean(relu(1 + l_f))."""
    return F.relu(1 - _logits(real_logits, "real_logits")).mean() + F.relu(1 + _logits(fake_logits, "fake_logits")).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean(l_f)."""
    return -_logits(fake_logits, "fake_logits").mean()


def wasserstein_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Critic loss mean(l_f) - mean(l_r)."""
    return _logits(fake_logits, "fake_logits").mean() - _logits(real_logits, "real_logits").mean()


def wasserstein_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean(l_f)."""
    return -_logits(fake_logits, "fake_logits").mean()


def _paired(real_scores, fake_scores, real, fake):
    for t, name in ((real_scores, "real_scores"), (fake_scores, "fake_scores"), (real, "real"), (fake, "fake")):
        C.check_tensor(t, name)
    n = real.shape[0] if real.dim() else 0
    if n == 0:
        raise ValueError(f"real must be a non-empty batch (N, ...), got shape {tuple(real.shape)}")
    if fake.shape != real.shape:
        raise ValueError(f"real and fake must have the same shape (paired by batch index), got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    for t, name in ((real_scores, "real_scores"), (fake_scores, "fake_scores")):
        if t.numel() != n:
            raise ValueError(f"{name} must hold one score per sample ({n}), got shape {tuple(t.shape)}")
    ct = compute_dtype(real_scores.dtype, fake_scores.dtype)
    return real_scores.reshape(n).to(ct), fake_scores.reshape(n).to(ct)


def loss_sensitive_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor, real: torch.Tensor,
                          fake: torch.Tensor, lam: float = 2e-4, slope: float = 0.0, gamma: float = 0.0) -> torch.Tensor:
    """Loss-Sensitive GAN (Qi 2017) and GLS-GAN. With the loss function L (D's scores) and the
    margin delta_i = lam * ||x_i - G(z_i)||_1 over the flattened images (constant in backward):
        mean(leaky_relu(delta_i + L(x_i) - L(G(z_i)), slope)) + gamma * mean(L(x)).
    slope 0 is LS-GAN (relu); slope 1 gives a WGAN-like objective."""
    lr, lf = _paired(real_scores, fake_scores, real, fake)
    lam = C.check_positive_finite(lam, "lam")
    slope, gamma = C.check_finite(slope, "slope"), C.check_finite(gamma, "gamma")
    delta = lam * (real - fake).detach().flatten(1).abs().sum(dim=1).to(lr.dtype)
    out = F.leaky_relu(delta + lr - lf, negative_slope=slope).mean()
    return out + gamma * lr.mean() if gamma else out


def loss_sensitive_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """mean(L(G(z)))."""
    return _logits(fake_scores, "fake_scores").mean()


def _dual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # mean_i[-a_i + LSE(a_i, b_1..b_M)] + mean_j[b_j + LSE(-b_j, -a_1..-a_N)], in O(N + M): the log-sum-
    # exp over the other set is shared by every row and merged with the row's own logit.
    lse_b = torch.logsumexp(b, dim=0)
    lse_neg_a = torch.logsumexp(-a, dim=0)
    first = (torch.logaddexp(a, lse_b) - a).mean()
    second = (torch.logaddexp(-b, lse_neg_a) + b).mean()
    return first + second


def dual_contrastive_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Dual contrastive loss (Yu et al. 2021), D form: each real logit contrasted against all fakes
    and each (negated) fake against all (negated) reals, as cross-entropies with the positive first."""
    return _dual(_logits(real_logits, "real_logits").reshape(-1), _logits(fake_logits, "fake_logits").reshape(-1))


def dual_contrastive_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The G form: the same expression with the roles of real and fake swapped (not the D objective)."""
    return _dual(_logits(fake_logits, "fake_logits").reshape(-1), _logits(real_logits, "real_logits").reshape(-1))


def _class_logits(logits, labels, name, label_name):
    C.check_tensor(logits, name, ndim=2)
    C.check_nonempty(logits, name)
    return C.check_labels(labels, label_name, logits.shape[0], logits.device, logits.shape[1])


def multi_hinge_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Crammer-Singer multi-class hinge: mean(relu(1 + max_{c != y} o_c - o_y))."""
    labels = _class_logits(logits, labels, "logits", "labels")
    if logits.shape[1] < 2:
        raise ValueError(f"logits must have at least 2 classes, got {logits.shape[1]}")
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return F.relu(1 + others - true).mean()


def acgan_d_loss(real_class_logits: torch.Tensor, real_labels: torch.Tensor, fake_class_logits: torch.Tensor,
                 fake_labels: torch.Tensor) -> torch.Tensor:
    """ACGAN's auxiliary classification term for D: CE on real plus CE on fake samples."""
    real_labels = _class_logits(real_class_logits, real_labels, "real_class_logits", "real_labels")
    fake_labels = _class_logits(fake_class_logits, fake_labels, "fake_class_logits", "fake_labels")
    return F.cross_entropy(real_class_logits, real_labels) + F.cross_entropy(fake_class_logits, fake_labels)


def acgan_g_loss(fake_class_logits: torch.Tensor, fake_labels: torch.Tensor) -> torch.Tensor:
    """ACGAN's auxiliary classification term for G: CE on fake samples."""
    fake_labels = _class_logits(fake_class_logits, fake_labels, "fake_class_logits", "fake_labels")
    return F.cross_entropy(fake_class_logits, fake_labels)


def _same_shape(x, y, xn, yn):
    C.check_tensor(x, xn)
    C.check_tensor(y, yn)
    if x.shape != y.shape:
        raise ValueError(f"{xn} and {yn} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def cycle_consistency_loss(rec_a: torch.Tensor, real_a: torch.Tensor, rec_b: torch.Tensor, real_b: torch.Tensor,
                           lambda_a: float = 10.0, lambda_b: float = 10.0) -> torch.Tensor:
    """CycleGAN: lambda_a * L1(G_B(G_A(a)), a) + lambda_b * L1(G_A(G_B(b)), b)."""
    _same_shape(rec_a, real_a, "rec_a", "real_a")
    _same_shape(rec_b, real_b, "rec_b", "real_b")
    lambda_a, lambda_b = C.check_positive_finite(lambda_a, "lambda_a"), C.check_positive_finite(lambda_b, "lambda_b")
    return lambda_a * F.l1_loss(rec_a, real_a) + lambda_b * F.l1_loss(rec_b, real_b)


def identity_loss(idt_a: torch.Tensor, real_b: torch.Tensor, idt_b: torch.Tensor, real_a: torch.Tensor,
                  lambda_a: float = 10.0, lambda_b: float = 10.0, lambda_identity: float = 0.5) -> torch.Tensor:
    """CycleGAN identity: lambda_identity * (lambda_b * L1(G_A(b), b) + lambda_a * L1(G_B(a), a)),
    idt_a = G_A(b), idt_b = G_B(a)."""
    _same_shape(idt_a, real_b, "idt_a", "real_b")
    _same_shape(idt_b, real_a, "idt_b", "real_a")
    lambda_a, lambda_b = C.check_positive_finite(lambda_a, "lambda_a"), C.check_positive_finite(lambda_b, "lambda_b")
    lambda_identity = C.check_positive_finite(lambda_identity, "lambda_identity")
    return lambda_identity * (lambda_b * F.l1_loss(idt_a, real_b) + lambda_a * F.l1_loss(idt_b, real_a))


def word_region_scores(words: torch.Tensor, regions: torch.Tensor, word_mask=None, gamma1: float = 5.0,
                       gamma2: float = 5.0, eps: float = 1e-8) -> torch.Tensor:
    """XMC-GAN's word-region (AttnGAN DAMSM) sentence-image scores, all pairs at once.

    words (B, T, D) with word_mask (B, T) (True for real words, False for padding); regions (B, R, D).
    For sentence s and image b: each word attends over b's regions with softmax(gamma1 * cos), its
    context vector is the attention-weighted sum of regions, and
        score(s, b) = log(sum_{words w of s} exp(gamma2 * cos(w, context_w))) / gamma2.
    Returns the (B_sentences, B_images) matrix; no loop over the batch."""
    C.check_tensor(words, "words", ndim=3)
    C.check_tensor(regions, "regions", ndim=3)
    if words.shape[2] != regions.shape[2]:
        raise ValueError(f"words and regions must have the same feature size, got {words.shape[2]} and {regions.shape[2]}")
    C.check_same_device(words=words, regions=regions)
    C.check_same_dtype(words=words, regions=regions)
    gamma1, gamma2 = C.check_positive_finite(gamma1, "gamma1"), C.check_positive_finite(gamma2, "gamma2")
    eps = C.check_positive_finite(eps, "eps")
    if regions.shape[1] == 0:
        raise ValueError(f"regions must hold at least one region per image, got shape {tuple(regions.shape)}")
    if word_mask is None:
        word_mask = torch.ones(words.shape[:2], dtype=torch.bool, device=words.device)
    if not isinstance(word_mask, torch.Tensor):
        raise TypeError(f"word_mask must be a torch.Tensor (True for real words), got {type(word_mask).__name__}")
    if word_mask.shape != words.shape[:2]:
        raise ValueError(f"word_mask must have shape {tuple(words.shape[:2])}, got {tuple(word_mask.shape)}")
    if word_mask.is_floating_point() or word_mask.is_complex():
        raise TypeError(f"word_mask must be bool or integer (True/1 for real words), got {word_mask.dtype}")
    C.check_same_device(words=words, word_mask=word_mask)
    if C.values_checked(word_mask) and words.shape[0] and not bool(word_mask.bool().any(dim=1).all()):
        # An all-padding sentence has no score (log of an empty sum = -inf); on CUDA only in debug
        # mode (fastgan.set_debug): there the value check is a host sync.
        raise ValueError("word_mask has a sentence with no words: every row needs at least one True entry")
    wn = F.normalize(words, dim=2, eps=eps)
    rn = F.normalize(regions, dim=2, eps=eps)
    attn = torch.softmax(gamma1 * torch.einsum("std,brd->sbtr", wn, rn), dim=3)  # (S, B, T, R)
    context = torch.einsum("sbtr,brd->sbtd", attn, regions)
    sim = (wn[:, None] * F.normalize(context, dim=3, eps=eps)).sum(dim=3)  # (S, B, T)
    logits = (gamma2 * sim).masked_fill(~word_mask.bool()[:, None, :], float("-inf"))
    return torch.logsumexp(logits, dim=2) / gamma2


def word_region_loss(words: torch.Tensor, regions: torch.Tensor, word_mask=None, gamma1: float = 5.0,
                     gamma2: float = 5.0, gamma3: float = 50.0) -> torch.Tensor:
    """Symmetric cross-entropy over the B x B word-region scores scaled by gamma3 (matching pairs on
    the diagonal): CE(gamma3 S, arange) + CE(gamma3 S^T, arange)."""
    C.check_tensor(words, "words", ndim=3)
    C.check_tensor(regions, "regions", ndim=3)
    if words.shape[0] != regions.shape[0]:
        raise ValueError(f"words and regions must have the same batch size (matching pairs), got {words.shape[0]} "
                         f"and {regions.shape[0]}")
    C.check_nonempty(words, "words")
    gamma3 = C.check_positive_finite(gamma3, "gamma3")
    s = gamma3 * word_region_scores(words, regions, word_mask, gamma1, gamma2)
    target = torch.arange(s.shape[0], device=s.device)
    return F.cross_entropy(s, target) + F.cross_entropy(s.T, target)
