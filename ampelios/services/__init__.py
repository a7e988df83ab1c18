"""Processes and services Ampelios starts or talks to: broker, Postgres, the stack."""
