"""training.pretext (the subpackage): the six pretext tasks' targets, heads, losses and the jigsaw permutation set.

One file for the subpackage, one section per module (colorization, super_resolution, jigsaw, anp + scene
"classification", captioning, then base / __init__ for every task alike): a file per module would hold one or two
tests for anp, scene, base and super_resolution, and the sections share the tiny backbone (tests/README.md).
Tiny everywhere: resnet18 at 32-64 px, batch 1-2, small heads."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from training.pretext import PRETEXT_TASKS, get_task_class
from training.pretext.anp import ANPClassification
from training.pretext.base import imagenet_normalize, pretext_indices, stage_maps
from training.pretext.captioning import EOS, PAD, SOS, UNK, Captioning, Vocabulary, tokenize
from training.pretext.colorization import Colorization, UpCatHead, bilinear_matrix, lab_to_rgb, rgb_to_lab
from training.pretext.jigsaw import (PERMUTATIONS_FILE, SEED, Jigsaw, assemble_tiles, cut_tiles,
                                     generate_permutations, load_permutations, main as jigsaw_main, shuffle_tiles)
from training.pretext.scene import SceneRecognition
from training.pretext.super_resolution import GemmConvTranspose2d, SuperResolution

CAPTIONS = ['a jagged red star above a dark field.', 'A smooth blue circle, warm sky!']


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return timm.create_model('resnet18', num_classes=0)


def _images(n=2, size=32, seed=0):
    """Smooth random RGB images in [0, 1] (bilinear blow-ups of 4x4 noise: learnable at any size)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(noise, size=(size, size), mode='bilinear', align_corners=False)


def _pixels(*rgb):
    """(1, 3, 1, len(rgb)) image of the given RGB triples."""
    return torch.tensor(rgb, dtype=torch.float32).T.reshape(1, 3, 1, len(rgb))


def _tiny(name, backbone):
    """A task with small heads, and a loader batch for it (batch 2; images 32 px, 64 for captioning so that
    attention has more than one position)."""
    x = _images(size=64 if name == 'captioning' else 32)
    vocab = Vocabulary.build(CAPTIONS, min_freq=1)
    options = {'colorization': dict(width=8), 'scene': dict(classes=5), 'anp': dict(classes=['a_b', 'c_d', 'e_f']),
               'jigsaw': dict(permutations=6, tile=16),
               'captioning': dict(vocab=vocab, embed_dim=16, hidden_dim=32, attention_dim=16, dropout=0.0)}
    options = options.get(name, {})
    batch = {'scene': (x, torch.tensor([1, 4])), 'anp': (x, torch.tensor([2, 0])),
             'captioning': vocab.collate(list(zip(x, CAPTIONS)))}.get(name, x)
    return get_task_class(name)(backbone, **options), batch


# ------------------------------------------------------------------------------------------ colour space

# CIE L*a*b* (D65) of sRGB primaries and greys, as published (e.g. scikit-image's rgb2lab, Lindbloom's calculator)
KNOWN_LAB = [((1, 0, 0), (53.2408, 80.0925, 67.2032)), ((0, 1, 0), (87.7347, -86.1827, 83.1793)),
             ((0, 0, 1), (32.2970, 79.1875, -107.8602)), ((1, 1, 1), (100.0, 0.0, 0.0)),
             ((0, 0, 0), (0.0, 0.0, 0.0)), ((0.5, 0.5, 0.5), (53.3890, 0.0, 0.0))]


def test_rgb_to_lab_known_colours():
    lab = rgb_to_lab(_pixels(*[rgb for rgb, _ in KNOWN_LAB]))[0, :, 0].T
    torch.testing.assert_close(lab, torch.tensor([l for _, l in KNOWN_LAB]), atol=1e-2, rtol=0)


def test_lab_round_trip_and_float32_under_autocast():
    corners = _pixels(*[(r, g, b) for r in (0, 1) for g in (0, 1) for b in (0, 1)])
    for rgb in (corners, _images(2, 16)):
        torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4, rtol=0)
    x = _images(1, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        lab = rgb_to_lab(x.bfloat16())
    assert lab.dtype == torch.float32
    torch.testing.assert_close(lab, rgb_to_lab(x.bfloat16().float()))


def test_colorization_targets_are_rgb_not_bgr(backbone):
    inputs, targets = Colorization(backbone, width=4).prepare(_pixels((1, 0, 0)))  # pure red
    L, a, b = KNOWN_LAB[0][1]
    assert inputs.shape == (1, 3, 1, 1)
    torch.testing.assert_close(inputs.flatten(), torch.full((3,), (L - 50) / 50), atol=1e-4, rtol=0)
    torch.testing.assert_close(targets.flatten(), torch.tensor([(a + 127) / 255, (b + 127) / 255]), atol=1e-4, rtol=0)


@pytest.mark.parametrize('size_in,size_out', [((1, 1), (5, 3)), ((3, 2), (8, 7)), ((7, 9), (64, 64)),
                                               ((8, 8), (8, 8)), ((10, 6), (4, 5))])
def test_bilinear_matrix_resamples_as_interpolate(size_in, size_out):
    x = torch.randn(2, 3, *size_in, dtype=torch.float64)
    resampled = bilinear_matrix(size_out[0], size_in[0], x) @ x @ bilinear_matrix(size_out[1], size_in[1], x).T
    expected = F.interpolate(x, size=size_out, mode='bilinear', align_corners=False)
    torch.testing.assert_close(resampled, expected, atol=1e-12, rtol=0)


def test_upcat_head_equals_the_naive_concat_conv():
    torch.manual_seed(0)
    head = UpCatHead([4, 6, 8], width=5, out_channels=2)
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4), torch.randn(2, 8, 2, 3)]
    size = (16, 20)
    up = [F.interpolate(r(f), size=size, mode='bilinear', align_corners=False) for r, f in zip(head.reduce, feats)]
    naive = torch.sigmoid(head.fuse(torch.cat(up, 1)))
    torch.testing.assert_close(head(feats, size), naive, atol=1e-5, rtol=1e-5)
    assert set(head.state_dict()) == {'reduce.0.weight', 'reduce.0.bias', 'reduce.1.weight', 'reduce.1.bias',
                                      'reduce.2.weight', 'reduce.2.bias', 'fuse.weight', 'fuse.bias'}


# ---------------------------------------------------------------------------------------- super-resolution

def test_super_resolution_sizes(backbone):
    task = SuperResolution(backbone)
    x = _images(2, 66)
    inputs, targets = task.prepare(x)
    assert inputs.shape == (2, 3, 16, 16) and targets.shape == (2, 3, 64, 64)
    torch.testing.assert_close(targets, x[..., :64, :64])  # the target is the RGB image itself, in [0, 1]
    small = F.interpolate(x[..., :64, :64], size=(16, 16), mode='bilinear', antialias=True, align_corners=False)
    torch.testing.assert_close(inputs, imagenet_normalize(small))
    out = task(backbone, inputs)
    assert out.shape == targets.shape and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match='smaller than scale=4'):
        task.prepare(_images(1, 3))


@pytest.mark.parametrize('args, size', [
    (dict(stride=2, padding=1, output_padding=1), (1, 1)),  # the SR head's deconvolution, on a 1x1 map
    (dict(stride=2, padding=1, output_padding=1), (3, 2)),
    (dict(stride=3, padding=2, output_padding=2, dilation=2), (4, 5)),
    (dict(stride=1, padding=0, bias=False), (2, 3)),
])
def test_gemm_conv_transpose_equals_the_stock_module(args, size):
    torch.manual_seed(0)
    stock = torch.nn.ConvTranspose2d(6, 5, 3, **args)
    gemm = GemmConvTranspose2d(6, 5, 3, **args)
    gemm.load_state_dict(stock.state_dict())
    x = torch.randn(2, 6, *size, requires_grad=True)
    outs = [m(x) for m in (stock, gemm)]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum(), [x, *m.parameters()])
             for o, m in zip(outs, (stock, gemm))]
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- jigsaw

def test_tiles_are_integer_cells_and_reassemble_under_the_inverse_permutation(backbone):
    x = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).reshape(2, 3, 12, 12)
    tiles = cut_tiles(x)
    assert tiles.shape == (2, 9, 3, 4, 4)
    for k in range(9):
        r, c = divmod(k, 3)
        assert torch.equal(tiles[:, k], x[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4])
    assert torch.equal(assemble_tiles(tiles), x)

    torch.manual_seed(1)
    task = Jigsaw(backbone, permutations=20, tile=16)
    images = _images(3, 40)
    puzzles, index = task.prepare(images)
    assert puzzles.shape == (3, 9, 3, 16, 16) and index.shape == (3,) and index.dtype == torch.long
    expected = F.interpolate(imagenet_normalize(images), size=(48, 48), mode='bilinear', antialias=True,
                             align_corners=False)
    inverse = task.permutations[index].argsort(1)
    assert torch.equal(assemble_tiles(shuffle_tiles(puzzles, inverse)), expected)
    for i in range(3):  # position j of the puzzle holds tile perm[j]
        assert torch.equal(puzzles[i], cut_tiles(expected)[i, task.permutations[index[i]]])


def test_shipped_permutation_set():
    perms = load_permutations()
    assert perms.shape == (1000, 9) and perms.dtype == np.int64
    assert (np.sort(perms, 1) == np.arange(9)).all() and len(np.unique(perms, axis=0)) == 1000
    assert np.array_equal(perms, generate_permutations(1000, SEED))  # the file is the generator's output
    distance = (perms[:, None] != perms[None]).sum(-1)[np.triu_indices(1000, 1)]
    assert distance.min() >= 2 and 7.9 < distance.mean() < 8.1  # official set: min 2, mean 8.0
    assert np.array_equal(load_permutations(50), perms[:50])
    assert jigsaw_main(['--check']) == 0


def test_permutation_generator_is_deterministic_greedy_and_prefix_stable():
    a, b = generate_permutations(40, seed=7), generate_permutations(40, seed=7)
    assert np.array_equal(a, b) and not np.array_equal(a, generate_permutations(40, seed=8))
    assert np.array_equal(generate_permutations(15, seed=7), a[:15])
    # greedy: each row has the largest total Hamming distance to the rows before it among all 9! permutations
    from itertools import permutations
    every = np.array(list(permutations(range(9))))
    for k in (1, 2, 10):
        best = max((every[:, None] != a[None, :k]).sum((1, 2))[~(every[:, None] == a[None, :k]).all(-1).any(-1)])
        assert (a[k] != a[:k]).sum() == best


def test_permutation_file_errors(tmp_path, backbone):
    bad = tmp_path / 'perms.txt'
    bad.write_text('0 1 2 3 4 5 6 7 7\n')
    with pytest.raises(ValueError, match='distinct permutation of 0..8'):
        load_permutations(path=bad)
    with pytest.raises(FileNotFoundError, match='--regenerate'):
        load_permutations(path=tmp_path / 'missing.txt')
    with pytest.raises(ValueError, match=r'shape \(P, 9\)'):
        Jigsaw(backbone, permutations=np.zeros((4, 4), dtype=int))
    assert torch.equal(Jigsaw(backbone, permutations=7).permutations, torch.from_numpy(load_permutations()[:7]))


def test_jigsaw_batches_all_tiles_through_the_backbone_once(backbone):
    task, batch = _tiny('jigsaw', backbone)
    calls = []
    backbone.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    logits = task(backbone, task.prepare(batch)[0])
    assert calls == [(18, 3, 16, 16)] and logits.shape == (2, 6)


# ---------------------------------------------------------------------------------------- classification

def test_anp_classes_come_from_the_class_list(backbone):
    task = ANPClassification(backbone, ['amazing_view', 'cute_dog', 'dark_street', 'happy_baby'])
    assert task.num_classes == 4 and task.head.out_features == 4 and task.classes[1] == 'cute_dog'
    with pytest.raises(TypeError):
        ANPClassification(backbone)  # no default count
    assert SceneRecognition(backbone).head.out_features == 365
    with pytest.raises(ValueError, match=r'\(images, labels\) batch'):
        task.prepare(_images())


def test_backbones_the_heads_cannot_read_are_refused_in_one_line():
    with pytest.raises(ValueError, match='^Conv2d has no forward_intermediates and no feature_info, which the pretext '
                                         'heads need to read its four stages: use a timm model'):
        Colorization(torch.nn.Conv2d(3, 3, 1))
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, num_classes=0)  # one stride: refused by every task
    for name in PRETEXT_TASKS:
        with pytest.raises(ValueError, match=r'^vit_tiny_patch16_224 has feature_info reductions \[16\] in 12 entries; '
                                             r'the pretext heads read four stages at four reductions'):
            _tiny(name, vit)


# --------------------------------------------------------------------------------------------- captioning

def test_tokenizer_and_vocabulary():
    assert tokenize("The sky's BLUE, isn't it? 1920s-style_art") == ["the", "sky's", "blue", "isn't", "it", "1920s",
                                                                      "style", "art"]
    texts = ['b a c', 'a b', 'a d', 'c b a', 'e']
    vocab = Vocabulary.build(texts, min_freq=2, max_length=3)
    assert vocab.itos == ('<pad>', '<sos>', '<eos>', '<unk>', 'a', 'b', 'c')  # by count, ties alphabetical
    assert Vocabulary.build(texts).itos == vocab.itos[:4]  # default min_freq 5
    assert vocab.encode('C a zebra b a') == [SOS, 6, 4, UNK, EOS]  # cut to max_length words
    tokens = vocab.encode_batch(['a', 'b c'])
    assert tokens.tolist() == [[SOS, 4, EOS, PAD], [SOS, 5, 6, EOS]]
    assert vocab.decode([SOS, 5, 3, 6, EOS, 4]) == 'b <unk> c' and vocab.decode(tokens[0]) == 'a'
    images, collated = vocab.collate([(torch.zeros(3, 4, 4), 'a'), (torch.ones(3, 4, 4), 'b c')])
    assert images.shape == (2, 3, 4, 4) and torch.equal(collated, tokens)
    assert Vocabulary.from_state_dict(vocab.state_dict()) == vocab


def test_captioning_loss_masks_padding_and_regularises_attention(backbone):
    task, batch = _tiny('captioning', backbone)
    inputs, tokens = task.prepare(batch)
    logits, alphas = task(backbone, inputs)
    assert logits.shape == (2, tokens.shape[1] - 1, len(task.vocab)) and alphas.shape[:2] == logits.shape[:2]
    torch.testing.assert_close(alphas.sum(-1), torch.ones(alphas.shape[:2]))
    targets = tokens[:, 1:]
    valid = targets != PAD
    assert not valid.all()  # the shorter caption is padded
    words = F.cross_entropy(logits[valid], targets[valid])
    coverage = (alphas * valid[..., None]).sum(1)
    torch.testing.assert_close(task.loss((logits, alphas), tokens), words + ((1 - coverage) ** 2).mean())
    noisy = logits.masked_fill(~valid[..., None], 123.0)  # whatever is predicted after eos does not count
    torch.testing.assert_close(task.loss((noisy, alphas), tokens), task.loss((logits, alphas), tokens))


def test_greedy_decoding_reproduces_memorised_captions(backbone):
    vocab = Vocabulary.build(CAPTIONS, min_freq=1)
    task = Captioning(backbone, vocab, embed_dim=16, hidden_dim=32, attention_dim=16, dropout=0.0)
    x = _images(2, 64)
    (images, tokens), _ = task.prepare(vocab.collate(list(zip(x, CAPTIONS))))
    backbone.eval()
    with torch.no_grad():
        features = task.encode(backbone, images)
    torch.manual_seed(0)
    opt = torch.optim.Adam(task.parameters(), lr=3e-2)
    for _ in range(40):
        loss = task.loss(task.head(features, tokens), tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
    task.eval()
    assert task.caption(backbone, x) == [' '.join(tokenize(c)) for c in CAPTIONS]
    assert [len(c.split()) for c in task.caption(backbone, x, max_length=3)] == [3, 3]
    with pytest.raises(ValueError, match="vocabulary's collate"):
        task.prepare((x, ['a text']))


# --------------------------------------------------------------------------------------- every task alike

@pytest.mark.parametrize('arch, indices, channels', [
    ('resnet18', (1, 2, 3, 4), (64, 128, 256, 512)),          # the paper's: layer1..layer4
    ('senti_vgg16_bn', (1, 2, 3, 4), (128, 256, 512, 512)),   # the paper's: the last ReLU of conv blocks 2..5
    ('convnext_atto', (0, 1, 2, 3), (40, 80, 160, 320)),      # by reduction: the last stage at 4, 8, 16, 32
    ('mobilenetv3_small_050', (1, 2, 3, 4), (8, 16, 24, 288)),
])
def test_heads_are_sized_from_the_backbones_feature_info(arch, indices, channels):
    torch.manual_seed(0)
    backbone = timm.create_model(arch, num_classes=0)
    assert pretext_indices(backbone) == indices
    maps = stage_maps(backbone, _images(1, 64), indices)  # what the heads read: channels and strides as listed
    assert tuple(m.shape[1] for m in maps) == channels
    assert [64 // m.shape[-1] for m in maps] == [backbone.feature_info[i]['reduction'] for i in indices]
    assert tuple(conv.in_channels for conv in _tiny('colorization', backbone)[0].head.reduce) == channels
    assert _tiny('captioning', backbone)[0].head.init_h.in_features == channels[-1]
    assert SuperResolution(backbone).head.body[0].in_channels == channels[-1]
    pooled = backbone(_images(1, 64)).shape[-1]  # e.g. MobileNetV3's conv head after the pooling: 1024
    assert _tiny('jigsaw', backbone)[0].head.fc.in_features == 9 * pooled


@pytest.mark.parametrize('name', list(PRETEXT_TASKS))
def test_every_task_trains_another_timm_backbone(name):
    torch.manual_seed(0)
    backbone = timm.create_model('mobilenetv3_small_050', num_classes=0)
    task, batch = _tiny(name, backbone)
    loss = task.step(backbone, batch)
    loss.backward()
    assert torch.isfinite(loss) and backbone.conv_stem.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('name', list(PRETEXT_TASKS))
def test_loss_decreases_on_a_fixed_batch(name, backbone):
    task, batch = _tiny(name, backbone)
    torch.manual_seed(0)
    inputs, targets = task.prepare(batch)  # prepared once: the jigsaw permutations stay fixed
    opt = torch.optim.Adam(list(backbone.parameters()) + list(task.parameters()), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = task.loss(task(backbone, inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize('name, size, shape', [
    ('colorization', 64, (1, 2, 64, 64)), ('super_resolution', 256, (1, 3, 256, 256)), ('scene', 64, (1, 5)),
    ('jigsaw', 64, (1, 6)), ('anp', 64, (1, 3)), ('captioning', 64, None)])
def test_batch_size_one(name, size, shape, backbone):
    task, batch = _tiny(name, backbone)
    one = (batch[0][:1], batch[1][:1]) if isinstance(batch, tuple) else batch[:1]
    one = (F.interpolate(one[0], size=size), one[1]) if isinstance(one, tuple) else F.interpolate(one, size=size)
    inputs, targets = task.prepare(one)
    outputs = task(backbone, inputs)
    if shape is not None:
        assert outputs.shape == shape
    loss = task.loss(outputs, targets)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
