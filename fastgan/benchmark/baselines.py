"""Public-implementation-style baselines, written from docs/semantics.md's descriptions of how StudioGAN and
Mimicry compute their losses (not their code): what users run today, timed beside fastgan."""
import numpy as np
import torch
import torch.nn.functional as F


def _studiogan_cosine_matrix(x):
    # Broadcast (N, 1, D) against (1, N, D): materializes N * N * D values.
    return F.cosine_similarity(x.unsqueeze(1), x.unsqueeze(0), dim=2)


def _remove_diag(m):
    n = m.shape[0]
    return m[~torch.eye(n, dtype=torch.bool, device=m.device)].view(n, n - 1)


def _class_mask(label, num_classes, same: bool):
    # Built on the host with a loop over every class, every call (a device-to-host sync).
    lab = label.detach().cpu().numpy()
    mask = np.zeros([num_classes, lab.shape[0]]) if same else np.ones([num_classes, lab.shape[0]])
    for c in range(num_classes):
        mask[c, np.where(lab == c)] = 1.0 if same else 0.0
    return torch.tensor(mask, device=label.device)[label]


def studiogan_2c(embed, proxy, label, temperature, num_classes):
    sim = torch.exp(_remove_diag(_studiogan_cosine_matrix(embed)) / temperature)  # no max shift
    pos = _remove_diag(_class_mask(label, num_classes, True)).to(sim.dtype)
    e2p = torch.exp(F.cosine_similarity(embed, proxy) / temperature)
    num = e2p + (pos * sim).sum(dim=1)
    den = torch.cat([e2p.unsqueeze(1), sim], dim=1).sum(dim=1)
    return -torch.log(num / den).mean()


def studiogan_d2d(embed, proxy, label, temperature, m_p, num_classes):
    sim = _remove_diag((_studiogan_cosine_matrix(embed) + m_p - 1) / temperature)
    sim_max = sim.max(dim=1, keepdim=True).values
    sim = F.relu(sim) - sim_max.detach()
    neg = _remove_diag(_class_mask(label, num_classes, False)).to(sim.dtype)
    pos_attr = F.relu((m_p - F.cosine_similarity(embed, proxy)) / temperature)
    neg_repul = torch.log(torch.exp(-pos_attr) + (neg * torch.exp(sim)).sum(dim=1))
    return (pos_attr + neg_repul).mean()


def mimicry_infonce(l, m):
    # The (N, HW, 1 + N*HW) candidate tensor and a log_softmax over it.
    n, r, hw = l.shape
    l_p = l.permute(0, 2, 1)
    u_p = torch.matmul(l_p, m).unsqueeze(2)  # (N, HW, 1, 1)
    u_n = torch.mm(m.permute(0, 2, 1).reshape(-1, r), l_p.reshape(-1, r).t())
    u_n = u_n.reshape(n, 1, n, hw).permute(0, 2, 3, 1)
    mask = torch.eye(n, device=l.device)[:, :, None, None]
    u_n = (1 - mask) * u_n - 10.0 * mask
    u_n = u_n.reshape(n, n * hw, 1).unsqueeze(1).expand(-1, hw, -1, -1)
    logits = torch.cat([u_p, u_n], dim=2)
    return -F.log_softmax(logits, dim=2)[:, :, 0].mean()
