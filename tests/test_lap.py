"LAP solvers, block LAP and the pair miner (`whale_kernel.lap`)"
import numpy as np, pytest
from scipy.optimize import linear_sum_assignment
import whale_kernel.lap as wl
from whale_kernel.lap import lap_solve, assignment_cost, available_solvers, block_lap, derangement, PairMiner, k_schedule

SOLVERS = available_solvers()
SHAPES = [(60, 60), (35, 60), (60, 35), (1, 1), (1, 5)]

def _scipy_opt(c):
    "Optimal cost by scipy on the matrix as given (`inf` handled natively); None when infeasible"
    try: r, k = linear_sum_assignment(c)
    except ValueError: return None
    return float(c[r, k].sum()), len(r)

def _check(c, x):
    "Columns distinct, in range, never a forbidden cell"
    a = np.flatnonzero(x >= 0)
    assert len(np.unique(x[a])) == len(a)
    assert (x[a] < c.shape[1]).all()
    assert np.isfinite(c[a, x[a]]).all()

def test_solvers_in_order():
    assert SOLVERS and SOLVERS[-1] == 'scipy'
    assert SOLVERS == [s for s in ('lapjv', 'lap', 'scipy') if s in SOLVERS]

@pytest.mark.parametrize('solver', SOLVERS)
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_optimal_cost_plain(solver, shape, seed):
    c = np.random.default_rng(seed).random(shape) * 10 - 3
    x = lap_solve(c, solver=solver)
    _check(c, x)
    opt, n = _scipy_opt(c)
    assert (x >= 0).sum() == n == min(shape)
    assert assignment_cost(c, x) == pytest.approx(opt, abs=1e-9)

@pytest.mark.parametrize('solver', SOLVERS)
@pytest.mark.parametrize('shape', SHAPES[:3])
@pytest.mark.parametrize('frac', [0.2, 0.6])
def test_optimal_cost_masked(solver, shape, frac):
    rng = np.random.default_rng(int(frac*10) + shape[0])
    c = rng.random(shape)
    c[rng.random(shape) < frac] = np.inf
    ref = _scipy_opt(c)
    if ref is None: pytest.skip('no full assignment avoids the mask')
    x = lap_solve(c, solver=solver)
    _check(c, x)
    assert (x >= 0).sum() == ref[1]
    assert assignment_cost(c, x) == pytest.approx(ref[0], abs=1e-9)

@pytest.mark.parametrize('solver', SOLVERS)
def test_float32_large_path(solver):
    "Above `f32_above` cells the solvers run in float32; the assignment stays optimal up to float32 rounding"
    c = np.random.default_rng(5).random((120, 120)).astype(np.float32)
    c[np.random.default_rng(6).random(c.shape) < 0.1] = np.inf
    x = lap_solve(c, solver=solver, f32_above=100)
    _check(c, x)
    assert assignment_cost(c, x) == pytest.approx(_scipy_opt(c.astype(np.float64))[0], rel=1e-5)

@pytest.mark.parametrize('solver', SOLVERS)
def test_unavoidable_mask_is_unassigned(solver):
    c = np.random.default_rng(0).random((5, 5)); c[:, 2] = np.inf; c[3] = np.inf
    x = lap_solve(c, solver=solver)
    _check(c, x)
    assert x[3] == -1 and (x >= 0).sum() == 4   # row 3 has no allowed column; column 2 is allowed to nobody
    assert 2 not in x

def test_bad_input():
    with pytest.raises(ValueError, match='NaN'): lap_solve(np.array([[1., np.nan], [0., 1.]]))
    with pytest.raises(ValueError, match='-inf'): lap_solve(np.array([[1., -np.inf], [0., 1.]]))
    with pytest.raises(ValueError, match='2-D'): lap_solve(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match='unknown solver'): lap_solve(np.ones((2, 2)), solver='auction')
    assert (lap_solve(np.zeros((3, 0))) == -1).all()

def test_missing_solver(monkeypatch):
    monkeypatch.setattr(wl, 'available_solvers', lambda: ['scipy'])
    with pytest.raises(ImportError, match='not installed'): lap_solve(np.ones((2, 2)), solver='lapjv')
    c = np.random.default_rng(0).random((8, 8))
    assert assignment_cost(c, lap_solve(c)) == pytest.approx(_scipy_opt(c)[0])   # falls back to scipy

@pytest.mark.parametrize('mode', ['random', 'diagonal'])
@pytest.mark.parametrize('shape,blocks', [((100, 100), 4), ((97, 150), 5), ((10, 10), 20), ((7, 9), 1)])
def test_block_lap_assigns_every_row_once(mode, shape, blocks):
    c = np.random.default_rng(3).random(shape)
    x = block_lap(c, blocks=blocks, mode=mode, rng=0)
    assert (x >= 0).all() and (x < shape[1]).all()
    assert len(np.unique(x)) == shape[0]

def test_block_lap_callable_and_optimality():
    c = np.random.default_rng(4).random((80, 90))
    seen = []
    def f(r, k): seen.append(len(r) * len(k)); return c[np.ix_(r, k)]
    x = block_lap(f, blocks=4, n=80, m=90, rng=1)
    assert sum(seen) < c.size / 3                                     # only the diagonal blocks were built
    np.testing.assert_array_equal(x, block_lap(c, blocks=4, rng=1))
    assert assignment_cost(c, block_lap(c, blocks=1)) == pytest.approx(_scipy_opt(c)[0])
    with pytest.raises(ValueError, match='at least as many columns'): block_lap(c.T)
    with pytest.raises(ValueError, match='mode'): block_lap(c, mode='stripes')
    with pytest.raises(ValueError, match='n and m'): block_lap(f)

def test_derangement():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 30, 300)
    p = derangement(g, rng=1)
    single = np.bincount(g, minlength=30)[g] == 1
    assert (p[single] == -1).all()
    ok = ~single
    assert (p[ok] != np.flatnonzero(ok)).all()                 # never itself
    assert (g[p[ok]] == g[ok]).all()                           # same group
    assert sorted(p[ok]) == sorted(np.flatnonzero(ok))         # a permutation: every photo is a partner once

def _ids(seed=0, n_ids=25, n_new=15):
    rng = np.random.default_rng(seed)
    ids = [f'w{i}' for i in range(n_ids) for _ in range(rng.integers(1, 5))] + ['new_whale'] * n_new
    return np.array(rng.permutation(ids), dtype=object)

@pytest.mark.parametrize('blocks,extra', [(1, True), (3, True), (1, False)])
def test_miner_pairs_are_legal(blocks, extra):
    ids = _ids()
    pm = PairMiner(ids, seed=0, extra=extra)
    counts = {k: (ids == k).sum() for k in set(ids)}
    assert all(counts[ids[a]] >= 2 and ids[a] != 'new_whale' for a in pm.rows)   # anchors: whales with 2+ photos
    used = set()
    rng = np.random.default_rng(1)
    for ep in range(6):
        score = rng.random((pm.n, pm.m))
        p = pm.epoch_pairs(score, k=[5, 1, 0.1, 0.01, 0, 0][ep], blocks=blocks)
        pos, neg = p[p[:, 2] == 1, :2], p[p[:, 2] == 0, :2]
        # one positive and one negative per anchor
        assert sorted(pos[:, 0]) == sorted(pm.rows) and sorted(neg[:, 0]) == sorted(pm.rows)
        assert (pos[:, 0] != pos[:, 1]).all() and (ids[pos[:, 0]] == ids[pos[:, 1]]).all()
        assert (ids[neg[:, 0]] != ids[neg[:, 1]]).all()
        assert not ((ids[neg[:, 0]] == 'new_whale') & (ids[neg[:, 1]] == 'new_whale')).any()
        if not extra: assert set(neg[:, 1]) <= set(pm.rows)
        keys = {tuple(sorted(o)) for o in neg.tolist()}
        assert len(keys) == len(neg)                                   # no pair twice in an epoch
        assert not keys & used                                         # nor one used in an earlier epoch
        used |= keys

def test_miner_follows_the_score():
    "With no noise the LAP picks the highest-scoring allowed partners"
    ids = _ids(1)
    pm = PairMiner(ids, seed=0)
    score = np.random.default_rng(2).random((pm.n, pm.m))
    same = pm.row_code[:, None] == pm.col_code[None]
    hard = pm.negatives(score, k=0, record=False)
    rand = pm.negatives(score, k=1e6, record=False)
    def total(neg): return score[np.arange(pm.n), [np.flatnonzero(pm.cols == b)[0] for b in neg[:, 1]]].sum()
    assert total(hard) > total(rand)
    assert len(pm.used_r) == 0                                         # record=False leaves no trace

def test_miner_callable_score_and_exhaustion():
    ids = np.array(['a', 'a', 'b', 'b'], dtype=object)
    pm = PairMiner(ids, seed=0)
    calls = []
    def score(r, c): calls.append((len(r), len(c))); return np.zeros((len(r), len(c)))
    for _ in range(4):   # only 4 different-whale pairs exist: later epochs must reuse, never crash
        p = pm.epoch_pairs(score, k=0.1)
        neg = p[p[:, 2] == 0]
        assert (ids[neg[:, 0]] != ids[neg[:, 1]]).all()
    assert calls

def test_miner_errors():
    with pytest.raises(ValueError, match='no whale has two'): PairMiner(['a', 'b', 'new_whale'])
    with pytest.raises(ValueError, match='one whale'): PairMiner(['a', 'a', 'a'], extra=False)

def test_k_schedule():
    k = k_schedule(10, 100, 0.25)
    assert k[0] == pytest.approx(100) and k[-1] == pytest.approx(0.25)
    assert (np.diff(k) < 0).all()
    assert k_schedule(1, 5, 1)[0] == pytest.approx(5)
