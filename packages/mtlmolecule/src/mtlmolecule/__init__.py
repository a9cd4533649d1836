"""QM9 with the DB-MTL paper's 11 tasks: conversion, graphs, MPNN, benchmark builder."""
