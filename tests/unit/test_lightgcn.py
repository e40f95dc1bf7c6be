"""Graph build, propagation and the text-aware LightGCN: known small answers and invariants on real tiny data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from m6rec.data.dataset import global_offsets
from m6rec.graph.build import build_graph, graph_from_edges, load_graph, save_graph
from m6rec.graph.sampling import DomainNegativeSampler
from m6rec.models.lightgcn import SymmetricSparseMM, TextLightGCN
from m6rec.training.checkpoint import load_checkpoint, save_checkpoint
from m6rec.training.pretrain import negative_pools

SOURCES = ["ml-100k", "amazon-office"]


def _scipy(adj: torch.Tensor) -> sp.csr_matrix:
    return sp.csr_matrix((adj.values().numpy(), adj.col_indices().numpy(), adj.crow_indices().numpy()),
                         shape=tuple(adj.shape))


@pytest.fixture(scope="module")
def graph(tiny_prepared):
    return build_graph(tiny_prepared, SOURCES)


def _toy_graph():
    # users 0,1 in domain "a" (items 0..2), user 2 in domain "b" (items 3..4); item 2 and 4 have no edges.
    return graph_from_edges(["a", "b"], [2, 1], [3, 2],
                            edge_user=np.array([0, 0, 1, 2, 0]), edge_item=np.array([0, 1, 1, 3, 0]),
                            edge_domain=np.array([0, 0, 0, 1, 0]))


def test_normalised_adjacency_by_hand():
    g = _toy_graph()
    assert g.num_edges == 4  # the duplicate (0, 0) is merged
    dense = g.adj.to_dense().numpy()
    nu = g.n_users  # item i is node nu + i
    # degrees: u0 = 2, u1 = 1, u2 = 1, i0 = 1, i1 = 2, i3 = 1; items 2 and 4 are isolated.
    expected = {(0, nu + 0): 1 / math.sqrt(2), (0, nu + 1): 1 / 2, (1, nu + 1): 1 / math.sqrt(2),
                (2, nu + 3): 1.0}
    want = np.zeros_like(dense)
    for (r, c), v in expected.items():
        want[r, c] = want[c, r] = v
    np.testing.assert_allclose(dense, want, rtol=1e-6)
    assert g.degrees().tolist() == [2, 1, 1, 1, 2, 0, 1, 0]
    assert g.counts()["n_isolated_nodes"] == 2


def test_graph_counts_and_global_ids(graph, tiny_prepared):
    inter = tiny_prepared.interactions
    train = inter[(inter["split"] == "train") & inter["domain"].isin(SOURCES)]
    assert graph.num_edges == len(train.drop_duplicates(["domain", "user", "item"]))
    assert graph.source_domains == tuple(SOURCES)
    counts = graph.counts()
    per = counts["per_domain"]
    # Ids are the project's global ids; the graph stops after the last source domain.
    assert graph.domains == ("ml-latest-small", "ml-100k", "amazon-office")
    assert graph.user_offsets == {d: o for d, o in global_offsets(tiny_prepared.meta, "user").items()
                                  if d in graph.domains}
    assert graph.item_offsets == {d: o for d, o in global_offsets(tiny_prepared.meta, "item").items()
                                  if d in graph.domains}
    for d in graph.domains:
        expect = len(train[train["domain"] == d].drop_duplicates(["user", "item"]))
        assert per[d]["n_edges"] == expect
        assert per[d]["n_users"] == tiny_prepared.meta["per_domain"][d]["n_users"]
        assert per[d]["n_items"] == tiny_prepared.meta["per_domain"][d]["n_items"]
    assert counts["n_adj_nonzeros"] == 2 * graph.num_edges
    assert counts["n_nodes"] == graph.n_users + graph.n_items
    assert per["ml-latest-small"]["n_edges"] == 0 and not per["ml-latest-small"]["source"]
    assert counts["n_isolated_nodes"] >= per["ml-latest-small"]["n_users"] + per["ml-latest-small"]["n_items"]
    # Each edge's global ids fall inside its domain's block.
    u_off, i_off = graph.user_offsets, graph.item_offsets
    for k, d in enumerate(graph.domains):
        sel = graph.edge_domain == k
        if sel.any():
            assert graph.edge_user[sel].min() >= u_off[d]
            assert graph.edge_user[sel].max() < u_off[d] + graph.n_users_per_domain[k]
            assert graph.edge_item[sel].min() >= i_off[d]
            assert graph.edge_item[sel].max() < i_off[d] + graph.n_items_per_domain[k]
    assert (graph.user_domain[graph.edge_user] == graph.edge_domain).all()
    assert (graph.item_domain[graph.edge_item] == graph.edge_domain).all()


def test_adjacency_is_symmetric_and_degree_normalised(graph):
    adj = _scipy(graph.adj)
    assert (adj != adj.T).nnz == 0
    deg = graph.degrees().numpy()
    np.testing.assert_array_equal(np.diff(adj.indptr), deg)
    coo = adj.tocoo()
    np.testing.assert_allclose(coo.data, 1.0 / np.sqrt(deg[coo.row] * deg[coo.col]), rtol=1e-6)
    # Users only link to items and items only to users (bipartite).
    assert ((coo.row < graph.n_users) != (coo.col < graph.n_users)).all()
    # Largest eigenvalue of D^-1/2 A D^-1/2 is 1 (propagation does not blow up).
    x = np.sqrt(deg).astype(np.float64)
    np.testing.assert_allclose(adj @ x, x, rtol=1e-5)


def test_graph_save_load_and_pyg_view(graph, tmp_path):
    counts = save_graph(graph, tmp_path)
    back = load_graph(tmp_path)
    assert back.domains == graph.domains and back.source_domains == graph.source_domains
    for name in ("edge_user", "edge_item", "edge_domain"):
        assert torch.equal(getattr(back, name), getattr(graph, name))
    assert torch.equal(back.adj.crow_indices(), graph.adj.crow_indices())
    assert torch.equal(back.adj.values(), graph.adj.values())
    assert back.counts() == counts
    data = graph.to_pyg()
    assert data.num_nodes == graph.num_nodes and data.edge_index.shape == (2, 2 * graph.num_edges)
    assert set(data.node_domain[data.edge_index[0]].tolist()) == {graph.domains.index(d) for d in SOURCES}


def test_build_graph_names_bad_domains(tiny_prepared):
    with pytest.raises(ValueError, match="no-such-domain"):
        build_graph(tiny_prepared, ["ml-100k", "no-such-domain"])
    with pytest.raises(ValueError, match="empty"):
        build_graph(tiny_prepared, [])


def test_symmetric_spmm_matches_dense_gradient(graph):
    torch.manual_seed(0)
    adj = graph.adj
    x = torch.randn(graph.num_nodes, 8, requires_grad=True)
    w = torch.randn(graph.num_nodes, 8)
    (SymmetricSparseMM.apply(adj, SymmetricSparseMM.apply(adj, x)) * w).sum().backward()
    dense = _scipy(adj)
    expected_grad = dense @ (dense @ w.numpy())  # Â symmetric: d/dx <Â Â x, w> = Â Â w
    np.testing.assert_allclose(x.grad.numpy(), expected_grad, rtol=1e-4, atol=1e-6)


def test_propagation_paths_agree(graph):
    """The fast symmetric path and torch-geometric's LGConv give the same embeddings and gradients."""
    outs = {}
    for prop in ("symmetric", "lgconv"):
        torch.manual_seed(1)
        model = TextLightGCN(graph.n_users, graph.n_items, embedding_dim=8, num_layers=3, propagation=prop)
        model.set_graph(graph.adj)
        users, items = model()
        loss = (users[:100] ** 2).sum() + (items[:100] ** 2).sum()
        loss.backward()
        outs[prop] = (users.detach(), items.detach(), model.user_emb.weight.grad.clone())
    for a, b in zip(outs["symmetric"], outs["lgconv"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_toy_forward_is_the_layer_average():
    g = _toy_graph()
    torch.manual_seed(0)
    model = TextLightGCN(g.n_users, g.n_items, embedding_dim=4, num_layers=2).set_graph(g.adj)
    x0 = model.input_embeddings().detach()
    a = g.adj.to_dense()
    expected = (x0 + a @ x0 + a @ a @ x0) / 3
    users, items = model()
    torch.testing.assert_close(torch.cat([users, items]).detach(), expected)


def test_text_items_start_as_pure_text_vectors():
    g = _toy_graph()
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(2, 6), dim=1)
    text_items = torch.tensor([1, 2])  # item 1 has edges, item 2 is isolated; items 0, 3, 4 have no text
    model = TextLightGCN.with_text(g.n_users, g.n_items, text, text_items, embedding_dim=4, num_layers=2,
                                   text_dtype="float32")
    model.set_graph(g.adj)
    x0 = model.input_embeddings().detach()
    proj = model.text_vectors(text).detach()
    torch.testing.assert_close(x0[g.n_users + text_items], proj)
    torch.testing.assert_close(x0[g.n_users + 0], model.item_emb.weight[0].detach())
    assert model.item_emb.weight[0].abs().sum() > 0  # items without text keep a random id embedding
    _, items = model()
    # The isolated item's final vector is exactly what a brand-new item with the same text would get.
    torch.testing.assert_close(items[2].detach(), model.text_item_vectors(text[1:2])[0].detach())
    weight, bias = model.text_projection()
    torch.testing.assert_close(text[1] @ weight + bias, items[2].detach())


def test_bpr_loss_by_hand():
    g = _toy_graph()
    torch.manual_seed(0)
    model = TextLightGCN(g.n_users, g.n_items, embedding_dim=4, num_layers=1, reg=0.5).set_graph(g.adj)
    users, pos, neg = torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([2, 4])
    u, i = model()
    bpr = torch.nn.functional.softplus((u[users] * i[neg]).sum(1) - (u[users] * i[pos]).sum(1)).mean()
    x0 = model.input_embeddings()
    reg = 0.5 * torch.cat([x0[users], x0[g.n_users + pos], x0[g.n_users + neg]]).pow(2).sum() / 2
    torch.testing.assert_close(model.calculate_loss((users, pos, neg)), bpr + reg)
    torch.testing.assert_close(model.bpr_loss(users, pos, neg, reg=0.0), bpr)


def test_negatives_stay_in_domain_and_skip_cold_items(graph, tiny_prepared):
    pools = negative_pools(tiny_prepared, graph)
    sampler = DomainNegativeSampler(graph.edge_user.numpy(), graph.edge_item.numpy(), graph.edge_domain.numpy(),
                                    pools, seed=3)
    batches = sampler.epoch(batch_size=500)
    users = torch.cat([b[0] for b in batches])
    pos = torch.cat([b[1] for b in batches])
    neg = torch.cat([b[2] for b in batches])
    assert len(users) == graph.num_edges and len(batches) == math.ceil(graph.num_edges / 500)
    # Every edge once per epoch.
    assert sorted(zip(users.tolist(), pos.tolist())) == sorted(zip(graph.edge_user.tolist(),
                                                                   graph.edge_item.tolist()))
    assert torch.equal(graph.item_domain[neg], graph.item_domain[pos])
    cold = np.zeros(graph.n_items, dtype=bool)
    items = tiny_prepared.items
    off = graph.item_offsets
    for d in SOURCES:
        cold_local = items.loc[(items["domain"] == d) & items["cold"], "item"].to_numpy()
        assert len(cold_local) > 0
        cold[off[d] + cold_local] = True
    assert not cold[neg.numpy()].any()
    assert sampler.is_positive(users.numpy(), neg.numpy()).mean() < 1e-4
    # Fresh negatives next epoch, and the same seed gives the same stream.
    again = DomainNegativeSampler(graph.edge_user.numpy(), graph.edge_item.numpy(), graph.edge_domain.numpy(),
                                  pools, seed=3).epoch(batch_size=500)
    assert torch.equal(again[0][2], batches[0][2])
    assert not torch.equal(sampler.epoch(batch_size=500)[0][2], batches[0][2])


def test_sampler_names_domains_without_pool(graph):
    pools = [np.zeros(0, dtype=np.int64)] * len(graph.domains)
    with pytest.raises(ValueError, match="no items to draw negatives"):
        DomainNegativeSampler(graph.edge_user.numpy(), graph.edge_item.numpy(), graph.edge_domain.numpy(), pools)


def test_checkpoint_rebuilds_the_same_model(tmp_path):
    g = _toy_graph()
    torch.manual_seed(0)
    text = torch.randn(3, 5)
    model = TextLightGCN.with_text(g.n_users, g.n_items, text, torch.tensor([0, 2, 4]), embedding_dim=4,
                                   num_layers=2, text_dtype="float32").set_graph(g.adj)
    with torch.no_grad():
        model.item_emb.weight.add_(0.3)  # as if trained: no longer the initial state
    save_checkpoint(tmp_path / "m.pt", model, args=model.config(), params={})
    back, info = load_checkpoint(tmp_path / "m.pt")
    assert info["args"] == model.config()
    back.set_graph(g.adj)
    for a, b in zip(model(), back()):
        torch.testing.assert_close(a, b)


def test_model_rejects_bad_inputs():
    with pytest.raises(ValueError, match="propagation"):
        TextLightGCN(3, 3, propagation="dense")
    model = TextLightGCN(2, 3)
    with pytest.raises(ValueError, match="set_graph"):
        model()
    with pytest.raises(ValueError, match="shape"):
        model.set_graph(_toy_graph().adj)


def test_id_dropout_represents_some_items_by_text_alone_in_training_only():
    torch.manual_seed(0)
    text = torch.randn(200, 6)
    n_items = 300
    model = TextLightGCN.with_text(3, n_items, text, torch.arange(100, 300), embedding_dim=4, num_layers=1,
                                   text_dtype="float32", id_dropout=0.5)
    with torch.no_grad():
        model.item_emb.weight.normal_()  # as if trained: every id embedding is non-zero
    pure_text = model.text_vectors(text).detach()
    model.train()
    x0 = model.input_embeddings().detach()[3:]
    text_only = (x0[100:] - pure_text).abs().sum(1) < 1e-6
    assert 0.3 < text_only.float().mean() < 0.7  # about half of the items with text lose their id embedding
    torch.testing.assert_close(x0[:100], model.item_emb.weight[:100].detach())  # items without text keep theirs
    model.eval()
    x0 = model.input_embeddings().detach()[3:]
    assert not ((x0[100:] - pure_text).abs().sum(1) < 1e-6).any()
    with pytest.raises(ValueError, match="id_dropout"):
        TextLightGCN(3, 3, id_dropout=1.0)
