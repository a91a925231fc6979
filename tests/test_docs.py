"""The repository stands alone: its code and docs point only at files it holds."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tracked_text_files():
    names = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        path = ROOT / name
        if path.suffix in ('.py', '.md', '.json', '.toml', '.txt', '') and path.is_file():
            yield name, path.read_text(encoding='utf-8', errors='replace')


def test_every_relative_link_resolves():
    """Each Markdown link to a path (not a URL, not an anchor of the same page) names a file or folder the
    repository holds, relative to the page."""
    broken = []
    for name, text in _tracked_text_files():
        if not name.endswith('.md'):
            continue
        for m in re.finditer(r'\]\(([^)\s]+)\)', text):
            target = m.group(1).split('#')[0]
            is_url = re.match(r'[a-z][a-z0-9+.-]*:', target)
            if target and not is_url and not (ROOT / name).parent.joinpath(target).exists():
                broken.append(f'{name}:{text[:m.start()].count(chr(10)) + 1}: {m.group(1)}')
    assert not broken, 'links to paths the repository does not hold:\n' + '\n'.join(broken)


def test_every_docs_page_referred_to_exists():
    pages = {m.group() for _, text in _tracked_text_files() for m in re.finditer(r'docs/[\w.-]+\.md', text)}
    assert {'docs/datasets.md', 'docs/method.md'} <= pages
    assert [p for p in sorted(pages) if not (ROOT / p).is_file()] == []


def test_readme_lists_the_deviations_from_the_paper():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    section = readme.split('## Deviations from the paper', 1)[1].split('\n## ', 1)[0]
    items = [line for line in section.splitlines() if line.startswith('- **')]
    assert len(items) >= 5
    for topic in ('Logits term', 'Super-resolution input', 'Model selection', 'LDL metrics'):
        assert any(item.startswith(f'- **{topic}') for item in items), topic


def test_readme_says_before_the_quick_start_that_no_weights_are_published_and_how_to_install_for_a_cpu():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    top = readme.split('## Quick start', 1)[0]
    assert '**No checkpoint is published yet**' in top and 'python -m training.release' in top
    command = 'pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu'
    assert command in top and command in readme.split('## Install', 1)[1].split('\n## ', 1)[0]
