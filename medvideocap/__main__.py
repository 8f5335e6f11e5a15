from medvideocap.cli import main

main()
