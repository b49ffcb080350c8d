from eegcache.cli import main

main()
