"""training.paper_results: the paper's numbers as transcribed (spot checks of Tables 1, 3 and 4)."""
from training import paper_results as paper


def test_paper_numbers_transcribed():
    assert paper.TABLE1[('fi', 'sll', 'accuracy', 'resnet50')] == (0.670, 0.707)
    assert paper.TABLE1[('abstract', 'ldl', 'intersection', 'resnet101')] == (0.597, 0.605)
    assert paper.TABLE1[('emotic', 'mll', 'macro_f1', 'vgg16_bn')] == (0.024, 0.038)
    assert len(paper.TABLE1) == 22 * 5
    assert paper.TABLE3['logits_hp'] == 0.7020 and paper.TABLE4[('resnet18', 'without_tl')] == 0.6589
