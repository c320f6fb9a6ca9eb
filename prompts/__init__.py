"""Prompt templates, one file per agent."""
