"""Hooks run by other programs on a compute host (libvirt's qemu hook)."""
