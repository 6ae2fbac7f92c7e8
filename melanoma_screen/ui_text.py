"""Every text of the app's page, in English and French.

Error sentences (a picture that cannot be read or is refused) are not here but in
melanoma_screen.messages, rendered from their code. Strings with {fields} are
filled in by app.py; the page's language switch re-renders them all.
"""

from __future__ import annotations

from .explain import HOW_TO_READ

TEXT = {
    "en": {
        "heading": ("# Melanoma screening aid\n\n"
                    "Upload a **dermoscopic** image of a skin lesion, take one with the camera or pick an "
                    "example, then press **Analyse**; or let the **Live camera** guide you and take the picture. The model estimates how likely the lesion is to be a "
                    "melanoma and shows which areas drove its score."),
        "disclaimer": ("<strong>Screening aid, not a diagnosis.</strong> A low score never rules out "
                       "melanoma. See a doctor about any lesion that changes, bleeds or worries you. The "
                       "model was trained on dermoscopic images (taken through a dermatoscope): an ordinary "
                       "phone photo is outside what it learned, and its result may then be meaningless."),
        "image": "Lesion image (dermoscopy)",
        "analyse": "Analyse",
        "tab_upload": "Upload or photo",
        "tab_live": "Live camera",
        "live_camera": "Live camera: it takes the picture when the view is good",
        "live_restart": "Start again",
        # Gradio writes this on its camera button in English whatever the page's language; the page's
        # script (app_views.WEBCAM_TEXT_JS) puts the chosen language's sentence in its place.
        "webcam_access": "Click to Access Webcam",
        "example_labels": {"benign": "benign", "malignant": "malignant"},
        "examples": "Examples from the test set, with their true diagnosis",
        "example": "Example",
        "true_diagnosis": "True diagnosis",
        "probabilities": "Calibrated probabilities",
        "classes": {"benign": "benign", "malignant": "malignant (melanoma)"},
        "risk_title": "Risk level:",
        "risk": {"low": "Low", "moderate": "Moderate", "high": "High"},
        "advice": {
            "low": "No urgent sign, but see a doctor if the lesion changes, bleeds or itches.",
            "moderate": "Show this lesion to a doctor, who may refer you to a dermatologist.",
            "high": "Ask for a dermatologist appointment soon.",
        },
        "probability_line": ("Probability of melanoma: {p}. The risk is moderate from {s} and high from {h} "
                             "(thresholds chosen on validation data)."),
        "probability_line_one_threshold": ("Probability of melanoma: {p}. The risk is high from {h} (threshold "
                                           "chosen on validation data; this model has no moderate band)."),
        "waiting": "The result appears here after you press <strong>Analyse</strong>.",
        "heatmap": "Where the model looked",
        "how_to_read": HOW_TO_READ.get("en", ""),
        "no_image": "No image was given. Upload a photo of the lesion, take one, or pick an example.",
        "bad_image": "This image could not be analysed: {reason}",
        "internal": "Something went wrong while analysing this image. Please try another image.",
        "no_model": ("No model is loaded, so the app cannot analyse images ({reason}). Train one with "
                     "<code>{command}</code> and restart the app, or set MODEL_ID to a trained "
                     "model folder or Hugging Face Hub id."),
        "feedback_title": "Report a wrong prediction",
        "feedback_intro": ("Know the true diagnosis of the lesion you analysed? Tell us. Only when you press "
                           "the button below are the image (without its metadata), the prediction and your "
                           "report stored, to help improve the model; nothing is stored otherwise."),
        "truth_label": "True diagnosis",
        "truth_choices": {"benign": "Benign", "malignant": "Malignant (melanoma)",
                          "other": "Another diagnosis", "unknown": "I don't know"},
        "comment": "Comment (optional)",
        "comment_placeholder": "e.g. biopsy result, what the doctor said",
        "send": "Send report",
        "thanks": "Thank you. Your report was saved (reference {id}).",
        "analyse_first": "Analyse an image first, then report what is wrong with its result.",
        "already_reported": "This result has already been reported (reference {id}).",
        "choose_truth": "Choose the true diagnosis first.",
        "feedback_failed": "Sorry, the report could not be saved ({reason}).",
        "about_title": "About the model",
        "about_model": "**Model:** `{id}` · **version:** `{version}` · **input size:** {size}×{size} pixels",
        "refused_title": "This picture was not analysed.",
        "about_check": ("**Input check:** pictures that are too dark, too bright or blurred, that show no lesion, "
                        "do not look like skin or are unlike the training images are refused instead of scored "
                        "({accepted} of the validation images were accepted)."),
        "about_no_check": ("**Input check:** this model has no fitted input check, so every picture that can be "
                           "read is scored."),
        "about_no_report": "This model has no test report (eval_results.json), so no test metrics can be shown.",
        "about_metrics_intro": ("Measured once on the held-out test split of the training source and on every "
                                "external set from another clinic, at the same thresholds:"),
        "test_column": "Test split (same source)",
        "external_column": "{name} (other clinic)",
        "about_external_note": ("The thresholds were chosen on validation images of the training sources; on another "
                                "clinic's dermatoscope they give the sensitivity and specificity of its column, which "
                                "is what to expect elsewhere. The test split shares its source with training and "
                                "flatters the model."),
        "metric": "Metric",
        "metrics": {
            "roc_auc": "ROC AUC",
            "accuracy": "Accuracy (threshold 0.5)",
            "sensitivity": "Sensitivity at the screening threshold ({t})",
            "specificity": "Specificity at the screening threshold ({t})",
            "sensitivity_high": "Sensitivity at the high-risk threshold ({h})",
            "specificity_high": "Specificity at the high-risk threshold ({h})",
            "images": "Images (melanomas)",
            "ece": "Expected calibration error (ECE)",
        },
        "about_thresholds": ("Risk is **low** below the screening threshold ({s}), **moderate** up to the "
                             "high-risk threshold ({h}) and **high** from there; both were chosen on "
                             "validation data, before the test split was used."),
        "about_site_thresholds": ("Risk is **low** below the screening threshold ({s}), **moderate** up to the "
                                  "high-risk threshold ({h}) and **high** from there. **Both thresholds are "
                                  "site-calibrated:** they were refitted on {n} diagnosed images of one site ({m} "
                                  "melanomas, {b} benign lesions) on {date}, from `{source}`, whose thresholds were {s0} "
                                  "and {h0}. On those images the screening threshold flags {sens} of the melanomas "
                                  "and the high-risk threshold clears {spec} of the benign lesions. The test metrics "
                                  "above were measured at the thresholds of `{source}`."),
        "about_site_adaptation": ("**Adapted to one site's device:** its normalisation statistics were re-estimated "
                                  "on {n} undiagnosed pictures of that site on {date}, from `{source}`; no weight was "
                                  "trained and no label was used."),
        "about_site_shift": ("**Adapted to one site's device:** its thresholds were moved to where {n} undiagnosed "
                             "pictures of that site lie, on {date}, from `{source}`; no weight was changed and no "
                             "label was used. The test metrics above were measured at the thresholds of `{source}`."),
        "about_limits": ("Trained on dermoscopic images from the ISIC archive, mostly of light skin; its "
                         "performance on other skin types, cameras and clinics is not established. Not a "
                         "medical device."),
        "no_model_about": "No model is loaded.",
    },
    "fr": {
        "heading": ("# Aide au dépistage du mélanome\n\n"
                    "Importez une image **dermoscopique** d'une lésion de la peau, prenez-en une avec la caméra "
                    "ou choisissez un exemple, puis appuyez sur **Analyser** ; ou laissez la **Caméra en direct** "
                    "vous guider et prendre la photo. Le modèle estime la probabilité "
                    "que la lésion soit un mélanome et montre les zones qui ont compté dans son score."),
        "disclaimer": ("<strong>Aide au dépistage, pas un diagnostic.</strong> Un score faible n'exclut jamais "
                       "un mélanome. Consultez un médecin pour toute lésion qui change, saigne ou vous "
                       "inquiète. Le modèle a été entraîné sur des images dermoscopiques (prises au "
                       "dermatoscope) : une photo ordinaire prise au téléphone sort de ce qu'il a appris, et "
                       "son résultat peut alors n'avoir aucun sens."),
        "image": "Image de la lésion (dermoscopie)",
        "analyse": "Analyser",
        "tab_upload": "Importer ou photographier",
        "tab_live": "Caméra en direct",
        "live_camera": "Caméra en direct : la photo est prise quand l'image est bonne",
        "live_restart": "Recommencer",
        "webcam_access": "Cliquez pour activer la caméra",
        "example_labels": {"benign": "bénin", "malignant": "malin"},
        "examples": "Exemples du jeu de test, avec leur diagnostic réel",
        "example": "Exemple",
        "true_diagnosis": "Diagnostic réel",
        "probabilities": "Probabilités calibrées",
        "classes": {"benign": "bénin", "malignant": "malin (mélanome)"},
        "risk_title": "Niveau de risque :",
        "risk": {"low": "Faible", "moderate": "Modéré", "high": "Élevé"},
        "advice": {
            "low": "Aucun signe urgent, mais consultez un médecin si la lésion change, saigne ou démange.",
            "moderate": "Montrez cette lésion à un médecin, qui pourra vous orienter vers un dermatologue.",
            "high": "Demandez rapidement un rendez-vous chez un dermatologue.",
        },
        "probability_line": ("Probabilité de mélanome : {p}. Le risque est modéré à partir de {s} et élevé à "
                             "partir de {h} (seuils choisis sur les données de validation)."),
        "probability_line_one_threshold": ("Probabilité de mélanome : {p}. Le risque est élevé à partir de {h} "
                                           "(seuil choisi sur les données de validation ; ce modèle n'a pas de "
                                           "zone de risque modéré)."),
        "waiting": "Le résultat s'affiche ici après un appui sur <strong>Analyser</strong>.",
        "heatmap": "Où le modèle a regardé",
        "how_to_read": HOW_TO_READ.get("fr", HOW_TO_READ.get("en", "")),
        "no_image": "Aucune image fournie. Importez une photo de la lésion, prenez-en une ou choisissez un exemple.",
        "bad_image": "Cette image n'a pas pu être analysée : {reason}",
        "internal": "Un problème est survenu pendant l'analyse de cette image. Essayez une autre image.",
        "no_model": ("Aucun modèle n'est chargé : l'application ne peut pas analyser d'images ({reason}). "
                     "Entraînez-en un avec <code>{command}</code> puis relancez l'application, ou indiquez "
                     "dans MODEL_ID un dossier de modèle entraîné ou un identifiant du Hugging "
                     "Face Hub."),
        "feedback_title": "Signaler une prédiction erronée",
        "feedback_intro": ("Vous connaissez le diagnostic réel de la lésion analysée ? Dites-le-nous. C'est "
                           "seulement quand vous appuyez sur le bouton ci-dessous que l'image (sans ses "
                           "métadonnées), la prédiction et votre signalement sont enregistrés, pour aider à "
                           "améliorer le modèle ; rien n'est enregistré sinon."),
        "truth_label": "Diagnostic réel",
        "truth_choices": {"benign": "Bénin", "malignant": "Malin (mélanome)",
                          "other": "Un autre diagnostic", "unknown": "Je ne sais pas"},
        "comment": "Commentaire (facultatif)",
        "comment_placeholder": "p. ex. résultat de biopsie, avis du médecin",
        "send": "Envoyer le signalement",
        "thanks": "Merci. Votre signalement a été enregistré (référence {id}).",
        "analyse_first": "Analysez d'abord une image, puis signalez ce qui est faux dans son résultat.",
        "already_reported": "Ce résultat a déjà été signalé (référence {id}).",
        "choose_truth": "Choisissez d'abord le diagnostic réel.",
        "feedback_failed": "Désolé, le signalement n'a pas pu être enregistré ({reason}).",
        "about_title": "À propos du modèle",
        "about_model": "**Modèle :** `{id}` · **version :** `{version}` · **taille d'entrée :** {size}×{size} pixels",
        "refused_title": "Cette image n'a pas été analysée.",
        "about_check": ("**Contrôle de l'image :** les images trop sombres, trop claires ou floues, sans lésion "
                        "visible, qui ne ressemblent pas à de la peau ou trop différentes des images d'entraînement "
                        "sont refusées au lieu d'être évaluées ({accepted} des images de validation ont été "
                        "acceptées)."),
        "about_no_check": ("**Contrôle de l'image :** ce modèle n'a pas de contrôle d'image ajusté ; toute image "
                           "lisible est évaluée."),
        "about_no_report": "Ce modèle n'a pas de rapport de test (eval_results.json) : aucune mesure ne peut être affichée.",
        "about_metrics_intro": ("Mesuré une seule fois sur le jeu de test mis de côté de la source d'entraînement et "
                                "sur chaque jeu externe d'une autre clinique, aux mêmes seuils :"),
        "test_column": "Jeu de test (même source)",
        "external_column": "{name} (autre clinique)",
        "about_external_note": ("Les seuils ont été choisis sur des images de validation des sources d'entraînement ; "
                                "avec le dermatoscope d'une autre clinique, ils donnent la sensibilité et la spécificité "
                                "de sa colonne, ce qui est à attendre ailleurs. Le jeu de test partage sa source avec "
                                "l'entraînement et flatte le modèle."),
        "metric": "Mesure",
        "metrics": {
            "roc_auc": "ROC AUC",
            "accuracy": "Exactitude (seuil 0,5)",
            "sensitivity": "Sensibilité au seuil de dépistage ({t})",
            "specificity": "Spécificité au seuil de dépistage ({t})",
            "sensitivity_high": "Sensibilité au seuil de risque élevé ({h})",
            "specificity_high": "Spécificité au seuil de risque élevé ({h})",
            "images": "Images (mélanomes)",
            "ece": "Erreur de calibration attendue (ECE)",
        },
        "about_thresholds": ("Le risque est **faible** sous le seuil de dépistage ({s}), **modéré** jusqu'au "
                             "seuil de risque élevé ({h}) et **élevé** au-delà ; les deux seuils ont été choisis "
                             "sur les données de validation, avant l'usage du jeu de test."),
        "about_site_thresholds": ("Le risque est **faible** sous le seuil de dépistage ({s}), **modéré** jusqu'au "
                                  "seuil de risque élevé ({h}) et **élevé** au-delà. **Les deux seuils sont calibrés "
                                  "sur site :** ils ont été réajustés sur {n} images diagnostiquées d'un même site ({m} "
                                  "mélanomes, {b} lésions bénignes) le {date}, à partir de `{source}`, dont les seuils "
                                  "étaient {s0} et {h0}. Sur ces images, le seuil de dépistage signale {sens} des "
                                  "mélanomes et le seuil de risque élevé écarte {spec} des lésions bénignes. Les mesures "
                                  "de test ci-dessus ont été faites aux seuils de `{source}`."),
        "about_site_adaptation": ("**Adapté à l'appareil d'un site :** ses statistiques de normalisation ont été "
                                  "réestimées sur {n} images non diagnostiquées de ce site le {date}, à partir de "
                                  "`{source}` ; aucun poids n'a été entraîné et aucun diagnostic n'a été utilisé."),
        "about_site_shift": ("**Adapté à l'appareil d'un site :** ses seuils ont été déplacés là où se situent {n} "
                             "images non diagnostiquées de ce site, le {date}, à partir de `{source}` ; aucun poids "
                             "n'a été modifié et aucun diagnostic n'a été utilisé. Les mesures de test ci-dessus ont "
                             "été faites aux seuils de `{source}`."),
        "about_limits": ("Entraîné sur des images dermoscopiques de l'archive ISIC, surtout de peaux claires ; "
                         "ses performances sur d'autres types de peau, appareils et cliniques ne sont pas "
                         "établies. Ce n'est pas un dispositif médical."),
        "no_model_about": "Aucun modèle n'est chargé.",
    },
}
LANGUAGES = [("English", "en"), ("Français", "fr")]
