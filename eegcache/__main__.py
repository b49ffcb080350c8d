from eegcache.cli import run

run()
