"""Tests of the memfs namespace: names, link counts, lookup counts and inode lifetime."""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator

import pytest

from nova_ipmigrate.memfs.protocol import PAGE_SIZE, ROOT_ID
from nova_ipmigrate.memfs.ramfile import DaemonHandles, RamFile
from nova_ipmigrate.memfs.store import PageStore
from nova_ipmigrate.memfs.tree import FsError, Inode, Tree

DIR = stat.S_IFDIR | 0o755
REG = stat.S_IFREG | 0o600


@pytest.fixture
def tree() -> Tree:
    return Tree()


@pytest.fixture
def store() -> Iterator[PageStore]:
    s = PageStore(16)
    yield s
    s.close()


def errno_of(excinfo: pytest.ExceptionInfo[FsError]) -> int:
    return excinfo.value.errno


def test_root(tree: Tree) -> None:
    root = tree.root
    assert root.nodeid == ROOT_ID and root.is_dir and root.nlink == 2
    assert root.nlookup == 1 and root.path() == "" and root.size == 4096
    assert tree.get(ROOT_ID) is root and tree.dir(ROOT_ID) is root


def test_fserror_message() -> None:
    assert str(FsError(errno.ENOENT)) == "ENOENT"
    assert str(FsError(errno.EPERM, "why")) == "why"
    assert FsError(errno.EPERM).errno == errno.EPERM


def test_add_and_lookup(tree: Tree) -> None:
    d = tree.add(tree.root, "libvirt", DIR, 1, 2)
    f = tree.add(d, "pc.ram", REG, 3, 4)
    assert d.nodeid != f.nodeid and {d.nodeid, f.nodeid} <= set(tree.nodes)
    assert (f.uid, f.gid, f.parent, f.name) == (3, 4, d, "pc.ram")
    assert tree.child(d, "pc.ram") is f
    assert tree.root.nlink == 3 and d.nlink == 2 and f.nlink == 1
    assert f.size == 0 and not f.is_dir
    assert f.nlookup == 0  # counted by the session when it replies with an entry


def test_add_existing_is_eexist(tree: Tree) -> None:
    tree.add(tree.root, "a", DIR, 0, 0)
    with pytest.raises(FsError) as e:
        tree.add(tree.root, "a", REG, 0, 0)
    assert errno_of(e) == errno.EEXIST


def test_get_dir_child_errors(tree: Tree) -> None:
    f = tree.add(tree.root, "f", REG, 0, 0)
    with pytest.raises(FsError) as e:
        tree.get(999)
    assert errno_of(e) == errno.ESTALE
    with pytest.raises(FsError) as e:
        tree.dir(f.nodeid)
    assert errno_of(e) == errno.ENOTDIR
    with pytest.raises(FsError) as e:
        tree.child(tree.root, "missing")
    assert errno_of(e) == errno.ENOENT


def test_node_ids_are_not_reused(tree: Tree) -> None:
    a = tree.add(tree.root, "a", REG, 0, 0)
    tree.detach(tree.root, "a")
    b = tree.add(tree.root, "a", REG, 0, 0)
    assert b.nodeid > a.nodeid


def test_path_nested_and_unlinked(tree: Tree) -> None:
    a = tree.add(tree.root, "libvirt", DIR, 0, 0)
    b = tree.add(a, "qemu", DIR, 0, 0)
    c = tree.add(b, "1-vm", DIR, 0, 0)
    f = tree.add(c, "pc.ram", REG, 0, 0)
    assert f.path() == "libvirt/qemu/1-vm/pc.ram"
    assert c.path() == "libvirt/qemu/1-vm"
    f.nlookup = 1
    tree.detach(c, "pc.ram")
    assert f.path() is None
    # a node under an unlinked directory has no path either
    g = tree.add(c, "g", REG, 0, 0)
    tree.detach(tree.root, "libvirt")
    assert g.path() is None
    assert Inode(99, REG).path() is None


def test_detach_semantics(tree: Tree) -> None:
    d = tree.add(tree.root, "d", DIR, 0, 0)
    d.nlookup = 1
    f = tree.add(d, "f", REG, 0, 0)
    f.nlookup = 2
    assert tree.detach(d, "f") is f
    assert "f" not in d.children and f.parent is None and f.nlink == 0
    assert f.nodeid in tree.nodes  # the kernel still holds lookups
    assert tree.detach(tree.root, "d") is d
    assert tree.root.nlink == 2 and d.nlink == 0
    with pytest.raises(FsError) as e:
        tree.detach(tree.root, "d")
    assert errno_of(e) == errno.ENOENT


def test_detach_without_lookups_drops_immediately(tree: Tree) -> None:
    f = tree.add(tree.root, "f", REG, 0, 0)
    tree.detach(tree.root, "f")
    assert f.nodeid not in tree.nodes


def test_forget_semantics(tree: Tree) -> None:
    f = tree.add(tree.root, "f", REG, 0, 0)
    f.nlookup = 3
    tree.forget(f.nodeid, 3)
    assert f.nlookup == 0 and f.nodeid in tree.nodes  # still linked
    f.nlookup = 3
    tree.detach(tree.root, "f")
    tree.forget(f.nodeid, 2)
    assert f.nlookup == 1 and f.nodeid in tree.nodes
    tree.forget(f.nodeid, 5)  # more than held: clamps at zero
    assert f.nlookup == 0 and f.nodeid not in tree.nodes
    tree.forget(f.nodeid, 1)  # unknown node: ignored
    tree.forget(ROOT_ID, 10)  # root: never forgotten
    assert tree.root.nlookup == 1 and ROOT_ID in tree.nodes


def _ram_node(tree: Tree, store: PageStore, name: str = "pc.ram") -> tuple[Inode, RamFile]:
    node = tree.add(tree.root, name, REG, 0, 0)
    node.ram = RamFile(node.nodeid, store)
    node.ram.resize(4 * PAGE_SIZE)
    node.nlookup = 1
    assert node.ram.table is not None
    node.ram.table.write(0, 0, memoryview(b"x"))  # one slot in use
    assert store.used == 1
    return node, node.ram


def test_ram_dropped_when_unlinked_and_forgotten(tree: Tree, store: PageStore) -> None:
    node, ram = _ram_node(tree, store)
    tree.detach(tree.root, "pc.ram")
    assert node.nodeid in tree.nodes and not ram.destroyed
    tree.forget(node.nodeid, 1)
    assert node.nodeid not in tree.nodes
    assert ram.destroyed and ram.table is None and store.used == 0


def test_forgotten_then_unlinked_is_dropped(tree: Tree, store: PageStore) -> None:
    node, ram = _ram_node(tree, store)
    tree.forget(node.nodeid, 1)
    assert node.nodeid in tree.nodes
    tree.detach(tree.root, "pc.ram")
    assert node.nodeid not in tree.nodes and ram.destroyed and store.used == 0


@pytest.mark.parametrize("holder", ["user", "daemon"])
def test_ram_in_use_is_kept(tree: Tree, store: PageStore, holder: str) -> None:
    node, ram = _ram_node(tree, store)
    if holder == "user":
        ram.user_opens = 1
    else:
        ram.handles = DaemonHandles(fd=-1, addr=0, length=ram.size)
    assert ram.in_use
    tree.detach(tree.root, "pc.ram")
    tree.forget(node.nodeid, 1)
    assert node.nodeid in tree.nodes and not ram.destroyed and store.used == 1
    ram.user_opens = 0
    ram.handles = None
    tree.forget(node.nodeid, 0)  # the next forget notices
    assert node.nodeid not in tree.nodes and ram.destroyed and store.used == 0


def test_rename_same_dir(tree: Tree) -> None:
    d = tree.add(tree.root, "d", DIR, 0, 0)
    f = tree.add(d, "a", REG, 0, 0)
    tree.rename(d, "a", d, "b", noreplace=False)
    assert d.children == {"b": f} and f.name == "b" and f.parent is d
    assert f.path() == "d/b"


def test_rename_onto_itself_is_a_no_op(tree: Tree) -> None:
    f = tree.add(tree.root, "a", REG, 0, 0)
    tree.rename(tree.root, "a", tree.root, "a", noreplace=True)
    assert tree.root.children == {"a": f}


def test_rename_directory_moves_link_counts(tree: Tree) -> None:
    a = tree.add(tree.root, "a", DIR, 0, 0)
    b = tree.add(tree.root, "b", DIR, 0, 0)
    sub = tree.add(a, "sub", DIR, 0, 0)
    assert (a.nlink, b.nlink) == (3, 2)
    tree.rename(a, "sub", b, "moved", noreplace=False)
    assert (a.nlink, b.nlink) == (2, 3)
    assert sub.parent is b and sub.path() == "b/moved"
    assert tree.root.nlink == 4


def test_rename_replaces_target(tree: Tree) -> None:
    a = tree.add(tree.root, "a", REG, 0, 0)
    b = tree.add(tree.root, "b", REG, 0, 0)
    b.nlookup = 1
    tree.rename(tree.root, "a", tree.root, "b", noreplace=False)
    assert tree.root.children == {"b": a}
    assert b.parent is None and b.nlink == 0 and b.nodeid in tree.nodes
    tree.forget(b.nodeid, 1)
    assert b.nodeid not in tree.nodes


def test_rename_replaces_empty_directory(tree: Tree) -> None:
    a = tree.add(tree.root, "a", DIR, 0, 0)
    tree.add(tree.root, "b", DIR, 0, 0)
    tree.rename(tree.root, "a", tree.root, "b", noreplace=False)
    assert tree.root.children == {"b": a}
    assert tree.root.nlink == 3


@pytest.mark.parametrize(("src", "dst", "noreplace", "err"), [
    ("f", "g", True, errno.EEXIST),
    ("f", "d", False, errno.EISDIR),
    ("d", "f", False, errno.ENOTDIR),
    ("d", "full", False, errno.ENOTEMPTY),
    ("missing", "x", False, errno.ENOENT),
])
def test_rename_errors_change_nothing(tree: Tree, src: str, dst: str, noreplace: bool,
                                      err: int) -> None:
    for n in ("f", "g"):
        tree.add(tree.root, n, REG, 0, 0)
    tree.add(tree.root, "d", DIR, 0, 0)
    full = tree.add(tree.root, "full", DIR, 0, 0)
    tree.add(full, "x", REG, 0, 0)
    before = dict(tree.root.children)
    nodes = set(tree.nodes)
    with pytest.raises(FsError) as e:
        tree.rename(tree.root, src, tree.root, dst, noreplace)
    assert errno_of(e) == err
    assert tree.root.children == before and set(tree.nodes) == nodes


def test_rename_into_itself_is_einval(tree: Tree) -> None:
    a = tree.add(tree.root, "a", DIR, 0, 0)
    b = tree.add(a, "b", DIR, 0, 0)
    for newparent in (a, b):
        with pytest.raises(FsError) as e:
            tree.rename(tree.root, "a", newparent, "x", noreplace=False)
        assert errno_of(e) == errno.EINVAL
    assert a.parent is tree.root and a.path() == "a" and b.path() == "a/b"


def test_rename_into_itself_over_a_target_changes_nothing(tree: Tree) -> None:
    a = tree.add(tree.root, "a", DIR, 0, 0)
    b = tree.add(a, "b", DIR, 0, 0)
    c = tree.add(b, "c", DIR, 0, 0)
    c.nlookup = 1
    with pytest.raises(FsError) as e:
        tree.rename(tree.root, "a", b, "c", noreplace=False)
    assert errno_of(e) == errno.EINVAL
    assert b.children == {"c": c} and c.path() == "a/b/c"
