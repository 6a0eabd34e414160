"""``python -m emotion_exp <stage>`` runs the same CLI as the ``emotion-exp`` script."""

from emotion_exp.cli import main

if __name__ == "__main__":
    main()
