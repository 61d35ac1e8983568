"""A stand-in for StudioGAN's src/utils/losses.py (StudioGAN is not on PyPI): the two contrastive
loss classes with StudioGAN's constructor and forward signatures, written out with the full N x N
similarity matrix as StudioGAN computes them (SPEC.md sections 2 and 3), single process."""
import torch
import torch.nn.functional as F


def _cosine(x, y):
    return F.normalize(x, dim=1, eps=1e-8) @ F.normalize(y, dim=1, eps=1e-8).T


class ConditionalContrastiveLoss(torch.nn.Module):
    def __init__(self, num_classes, temperature, master_rank, DDP):
        super().__init__()
        self.num_classes, self.temperature, self.master_rank, self.DDP = num_classes, temperature, master_rank, DDP

    def forward(self, embed, proxy, label, **_):
        n = embed.shape[0]
        off_diag = ~torch.eye(n, dtype=torch.bool, device=embed.device)
        sim = torch.exp(_cosine(embed, embed) / self.temperature) * off_diag
        same = (label[:, None] == label[None, :]) & off_diag
        pos_proxy = torch.exp(F.cosine_similarity(embed, proxy, dim=1, eps=1e-8) / self.temperature)
        numerator = pos_proxy + (sim * same).sum(dim=1)
        denominator = pos_proxy + sim.sum(dim=1)
        return -torch.log(numerator / denominator).mean()


class Data2DataCrossEntropyLoss(torch.nn.Module):
    def __init__(self, num_classes, temperature, m_p, master_rank, DDP):
        super().__init__()
        self.num_classes, self.temperature, self.m_p = num_classes, temperature, m_p
        self.master_rank, self.DDP = master_rank, DDP

    def forward(self, embed, proxy, label, **_):
        n = embed.shape[0]
        off_diag = ~torch.eye(n, dtype=torch.bool, device=embed.device)
        a = (_cosine(embed, embed) + self.m_p - 1.0) / self.temperature
        shift = a.masked_fill(~off_diag, float("-inf")).max(dim=1).values.detach()
        diff = (label[:, None] != label[None, :]) & off_diag
        neg = (torch.exp(F.relu(a) - shift[:, None]) * diff).sum(dim=1)
        q = F.relu((self.m_p - F.cosine_similarity(embed, proxy, dim=1, eps=1e-8)) / self.temperature)
        return (q + torch.log(torch.exp(-q) + neg)).mean()


def d_hinge(d_logit_real, d_logit_fake, DDP=False):
    return torch.mean(F.relu(1. - d_logit_real)) + torch.mean(F.relu(1. + d_logit_fake))
